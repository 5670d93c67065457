"""`python -m softprompt ...`, which is also how torchrun starts it: `torchrun --nproc-per-node 2 -m softprompt train ...`."""

import sys

from .cli import main

sys.exit(main())
