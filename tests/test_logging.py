"""Log lines and progress bars share stderr without cutting into each other."""

from __future__ import annotations

import logging
import re

from tqdm import tqdm

from vgsalign.io import setup_logging

LINE = re.compile(r"^\d\d:\d\d:\d\d INFO vgsalign\.test: halfway$")


def test_log_line_is_written_above_an_open_bar(capsys, tmp_path):
    setup_logging(tmp_path / "stage.log")
    try:
        with tqdm(total=4, desc="scoring", mininterval=0) as bar:
            bar.update(2)
            logging.getLogger("vgsalign.test").info("halfway")
            bar.update(2)
        err = capsys.readouterr().err
        # A plain stream handler would append the line to the bar's text on the same
        # terminal line. Written above the bar, it is on a line of its own.
        assert [part for part in re.split(r"[\r\n]", err) if LINE.match(part)], err
        assert "halfway" in (tmp_path / "stage.log").read_text()
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            handler.close()
            root.removeHandler(handler)
