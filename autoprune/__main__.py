import faulthandler
import signal
import sys

from autoprune.cli import main

faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` prints every thread's stack
sys.exit(main())
