"""``python -m silo serve|worker`` (same as the ``silo`` command)."""

import sys

from silo.cli import main_silo

if __name__ == "__main__":
    sys.exit(main_silo())
