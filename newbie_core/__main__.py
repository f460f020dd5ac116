import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: nothing has started
    sys.stderr.write("\ninterrupted before any image was written\n")
    sys.exit(130)

sys.exit(main())
