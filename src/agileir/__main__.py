import sys

from agileir.cli import main

sys.exit(main())
