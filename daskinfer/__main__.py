from daskinfer.cli import entry

entry()
