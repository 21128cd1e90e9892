"""`python -m g4seg_core.cli`: the same as the `g4seg` command."""
import sys

from g4seg_core.cli import main

sys.exit(main())
