"""The CLI's commands, one module each: compile, verify, preprocess, train, export, generate (and which plan a
`run` command uses). `ltxc/cli.py` only parses arguments and calls `run_<command>` here."""
