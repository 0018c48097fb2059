"""``python -m blendmask ...`` (also what ``torchrun -m blendmask train ...`` runs)."""
import sys

from blendmask.cli import main

if __name__ == "__main__":
    sys.exit(main())
