import sys

from stagectl.cli import main

sys.exit(main())
