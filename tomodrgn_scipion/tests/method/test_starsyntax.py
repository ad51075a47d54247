"""STAR syntax check: valid files of every layout pass, each kind of syntax error names file, line and block."""
from pathlib import Path

import pytest

from tomodrgn_scipion.method.errors import InputError
from tomodrgn_scipion.method.starsyntax import check_star_syntax

RELION31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
1 opticsGroup1 1.350000

data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
_rlnGroupName #3
1@stacks/a.mrcs 1 000_001
2@stacks/a.mrcs 1 000_001

"""

RELION5_TOMO = """
data_global

loop_
_rlnTomoName
_rlnVoltage
_rlnTomoTiltSeriesStarFile
TS_01 300.0 'tilt series/TS_01.star'
TS_02 300.0 "tilt series/TS_02.star"

data_TS_01

loop_
_rlnMicrographMovieName
_rlnTomoNominalStageTiltAngle
_rlnTomoVisibleFrames
frames/TS_01_001.eer 0.0 [1,1,0,1]
frames/TS_01_002.eer 3.0 [1, 1, 0, 1]

data_TS_02

loop_
_rlnMicrographMovieName
_rlnTomoNominalStageTiltAngle

data_general

_rlnTomoSizeX 4000
_rlnTomoSizeY 4000   # a comment after a value
_rlnTomoName 'TS 01'
_rlnTomoHand -1.0
"""

WARP = """
data_

loop_
_rlnMagnification #1
_rlnImageName #2
_rlnGroupName #3
10000.000000\t1@stacks/tomo_000.mrcs\t000_000001
10000.000000\t2@stacks/tomo_000.mrcs\t000_000001
# a comment line inside the rows
10000.000000  3@stacks/tomo_000.mrcs  it's
"""


def write(tmp_path: Path, text: str, name: str = "p.star") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", [RELION31, RELION5_TOMO, WARP, "data_\n\nloop_\n_rlnA\n_rlnB\n", "data_x\n"],
                         ids=["relion31_optics", "relion5_tomo_blocks", "warp_tabs", "empty_loop", "empty_block"])
def test_valid_files_pass(tmp_path, text):
    check_star_syntax(write(tmp_path, text))


def test_the_sample_passes(sample_star):
    check_star_syntax(sample_star)


# (name, text, expected line, expected block, words the message must hold)
BAD = [
    ("duplicated_loop_label", WARP.replace("_rlnGroupName #3", "_rlnImageName #3"), 7, "data_", "_rlnImageName appears a second time"),
    ("duplicated_key", RELION5_TOMO.replace("_rlnTomoHand -1.0", "_rlnTomoSizeX 12"), 31, "data_general", "_rlnTomoSizeX appears a second time"),
    ("row_too_few", WARP.replace("\t2@stacks/tomo_000.mrcs", ""), 9, "data_", "2 fields, too few for the loop's 3"),
    ("row_too_many", RELION31.replace("2@stacks/a.mrcs 1", "2@stacks/a.mrcs 1 1"), 19, "data_particles", "4 fields, too many"),
    ("optics_row_short", RELION31.replace("1 opticsGroup1 1.350000", "1 opticsGroup1"), 10, "data_optics", "too few"),
    ("unquoted_space", RELION5_TOMO.replace("'tilt series/TS_01.star'", "tilt series/TS_01.star"), 8, "data_global", "4 fields"),
    ("quote_not_closed", RELION5_TOMO.replace("'tilt series/TS_01.star'", "'tilt series/TS_01.star"), 8, "data_global", "not closed"),
    ("double_quote_not_closed", RELION5_TOMO.replace("\"tilt series/TS_02.star\"", "\"tilt series/TS_02.star"), 9, "data_global", "not closed"),
    ("list_not_closed", RELION5_TOMO.replace("[1,1,0,1]", "[1,1,0,1"), 17, "data_TS_01", "list opened with ["),
    ("key_without_value", RELION5_TOMO.replace("_rlnTomoHand -1.0", "_rlnTomoHand"), 31, "data_general", "has no value"),
    ("key_two_values", RELION5_TOMO.replace("_rlnTomoName 'TS 01'", "_rlnTomoName TS 01"), 30, "data_general", "2 values"),
    ("rows_after_blank_line", WARP.replace("# a comment line", "\n# a comment line"), 12, "data_", "after the blank line 10"),
    ("before_first_block", "loop_\n_rlnA\n1\n", 1, None, "before the first data_ block"),
    ("block_twice", RELION31 + "\ndata_optics\n", 22, "data_optics", "appears a second time (first at line 4)"),
    ("label_with_value_in_loop", RELION31.replace("_rlnOpticsGroupName #2", "_rlnOpticsGroupName x"), 8, "data_optics", "loop labels stand alone"),
    ("loop_without_labels", "data_\nloop_\n1 2 3\n", 3, "data_", "no labels"),
]


@pytest.mark.parametrize("name,text,line,block,words", BAD, ids=[b[0] for b in BAD])
def test_syntax_errors_name_file_line_and_block(tmp_path, name, text, line, block, words):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        check_star_syntax(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: line {line}")
    if block is not None:
        assert f"(block {block})" in msg
    assert words in msg


def test_binary_file_is_one_line(tmp_path):
    path = tmp_path / "p.star"
    path.write_bytes(b"data_\nloop_\n_rlnA\n\xff\xfe\x00\n")
    with pytest.raises(InputError, match=r"line 4: not a text file"):
        check_star_syntax(path)


def test_read_star_runs_the_check(tmp_path):
    from tomodrgn_scipion.method.star import read_star

    path = write(tmp_path, WARP.replace("_rlnGroupName #3", "_rlnImageName #3"))
    with pytest.raises(InputError, match="line 7 .*appears a second time"):
        read_star(path)
