"""One runner per framework behind one small interface (`trainer.runners.base.Runner`)."""
