"""``python -m beamml <pipeline> [flags]``: the same as the ``beamml`` command."""
import sys

from beamml.pipelines.__main__ import main

if __name__ == '__main__':
    sys.exit(main())
