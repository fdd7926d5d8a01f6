from edgeconvnext.cli import entry

entry()
