import sys

from llava_cli.main import main

sys.exit(main())
