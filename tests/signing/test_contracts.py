"""Names two layers share without importing each other (issue 22)."""


def test_converters_reads_the_tag_registration_writes():
    from converters.api import _TAG_REGISTERED_RUN
    from trainer.promotion.registration import TAG_RUN

    assert _TAG_REGISTERED_RUN == TAG_RUN


def test_the_runner_and_the_signer_agree_on_the_bundle_signature():
    from converters.edge import runner
    from trainer.signing import bundles

    assert bundles.runner.SIGNATURE_FILE == runner.SIGNATURE_FILE == "manifest.sig"
