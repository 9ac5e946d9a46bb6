import sys

from nightcore.cli.main import main

sys.exit(main())
