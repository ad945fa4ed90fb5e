"""What the scripts share on the command line: --help formatting and progress reports."""
import argparse
import sys
import time


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with '(default: ...)' only where a default exists and the help does not already
    say it."""

    def _get_help_string(self, action):
        quiet = (action.default is None or action.default is False or action.default == []
                 or "(default:" in (action.help or ""))
        return action.help if quiet else super()._get_help_string(action)


def progress(iterable, total, desc, unit="item", every=10.0):
    """Yield the items of ``iterable`` (``total`` of them) while reporting on stderr: a bar on a
    terminal; in a log (a file, a pipe, a job's output), one line at most every ``every``
    seconds, 'desc: done/total units, N s left', and none for work shorter than that."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
        return
    units = unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")
    start = last = time.perf_counter()
    for done, item in enumerate(iterable, 1):
        yield item
        now = time.perf_counter()
        if now - last >= every and done < total:
            print(f"{desc}: {done}/{total} {units}, {(now - start) / done * (total - done):.0f} s "
                  f"left", file=sys.stderr, flush=True)
            last = now
