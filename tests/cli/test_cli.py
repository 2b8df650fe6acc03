"""The command line: a mistyped command is one line with a did-you-mean."""
from __future__ import annotations

import pytest


# --------------------------------------------------------------------------- the command line
def test_mistyped_command_is_one_line_with_did_you_mean(capsys):
    from maskcls.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--log-every", "5", "trian", "prepared"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "maskcls: error: unknown command 'trian'; did you mean 'train'?\n"
    with pytest.raises(SystemExit) as e:
        main(["--log-every", "zero", "train"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--log-every" in err
