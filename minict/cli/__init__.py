"""The command line: main.py is the console script, commands.py the click commands.

Each command parses, calls one function of the image, bundle or runtime side,
and formats (listing.py's tables); main.py's guard turns any failure into the
one `fatal` line.
"""
