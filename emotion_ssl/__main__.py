"""`python -m emotion_ssl <command>`: the same as the `emotion-ssl` command (torchrun -m emotion_ssl)."""

import sys

from emotion_ssl.cli import main

sys.exit(main())
