"""Work done inside another runtime's interpreter (tensorflow, mxnet), behind one protocol.

    client.py           the main process's side: `worker("tensorflow").call("keras-export", ...)`
    server.py           the serve loop, `WorkerError`, the `@command` registry
    __main__.py         `<runtime python> -m converters.workers <runtime>`: load its commands, serve
    tf_native.py        tensorflow: the native Keras/SavedModel loader keras and tflite share
    keras.py            tensorflow: keras-export, keras-predict
    tflite.py           tensorflow: tflite-build, tflite-predict
    mxnet_export.py     mxnet: mx-export, mx-predict (and the checkpoint loader)
    mmdnn.py            mxnet: mmdnn-ir, ir-onnx, ir-pytorch
    caffe_reference.py  mxnet: caffe-predict, a numpy Caffe interpreter (parity reference)

The command modules run only inside their runtime and import their framework per command;
the main process imports only `client`. Nothing here is imported at package import.
"""
