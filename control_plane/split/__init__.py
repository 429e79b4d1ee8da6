"""The split: validate a batch's input file line by line and cut it into chunk objects.

`stream` validates and cuts (pure, streaming), `job` runs it for a batch (`run_split`), `launch`
starts it without making the client wait.
"""
