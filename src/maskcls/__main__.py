"""``python -m maskcls …`` (also what ``torchrun -m maskcls`` and ``accelerate launch -m maskcls`` run)."""
import sys

from .cli import main

sys.exit(main())
