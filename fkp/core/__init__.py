"""The ML core: data formats, the model, its training and its evaluation, as pure functions.

Nothing here imports the stages, serving or orchestration."""
