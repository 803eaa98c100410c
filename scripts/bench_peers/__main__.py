import sys

from scripts.bench_peers.driver import main

sys.exit(main())
