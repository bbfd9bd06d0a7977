import sys

from robustmix.cli import main

sys.exit(main())
