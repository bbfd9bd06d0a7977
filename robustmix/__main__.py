import sys

from robustmix.app.cli import main

sys.exit(main())
