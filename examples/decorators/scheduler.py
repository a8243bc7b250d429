# SPDX-License-Identifier: GPL-3.0-or-later
"""A periodic task: a timer started when Orthanc starts, cancelled when it stops.

Try it, then watch Orthanc's log (a line a second; Ctrl-C stops it cleanly):
    orthanc-py run examples/decorators/scheduler.py
"""

import threading

from orthanc_py import on_shutdown, on_startup


class RepeatingTimer(threading.Timer):
    """A threading.Timer that calls its function every ``interval`` seconds until cancelled."""

    def run(self):
        while not self.finished.wait(self.interval):
            self.function(*self.args, **self.kwargs)


def hello():
    print("In hello()")  # do stuff...


timer = RepeatingTimer(1.0, hello)


@on_startup
def start_scheduler():
    print("Starting the scheduler")
    timer.start()


@on_shutdown
def stop_scheduler():
    print("Stopping the scheduler")
    timer.cancel()
    timer.join()
