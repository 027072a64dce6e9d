import sys

from daskinfer.cli import main

sys.exit(main())
