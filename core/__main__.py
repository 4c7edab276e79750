"""``python -m activelab``: the command line (what ``torchrun -m activelab run ...`` starts on each worker)."""
import sys

from .cli import main

sys.exit(main())
