import sys

from lth_core.cli import main

sys.exit(main())
