import pytest

from classifier.labelfile import Example, Labels, read_labels, write_labels


def test_any_number_of_models_ordered_weakest_first(tmp_path):
    path = tmp_path / "three.csv"
    path.write_text("prompt,big_score,tiny_score,mid_score,task,source\n"
                    "q1,1,0,1,t1,x\nq2,1,0,0,t2,x\nq3,1,0,1,t2,x\nq4,0,1,0,t3,x\n")
    labels = read_labels(path)
    assert labels.tiers == ("tiny", "mid", "big")
    assert [e.scores for e in labels.examples] == [(0.0, 1.0, 1.0), (0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.0, 0.0)]
    assert [e.group for e in labels.examples] == ["t1", "t2", "t2", "t3"]  # several tasks: held out by task
    assert [e.label for e in labels.examples] == [True, True, True, False]


def test_the_shared_two_model_format_and_a_one_task_file(tmp_path):
    path = tmp_path / "gsm.csv"
    path.write_text("prompt,strong_score,weak_score,source,task\na,1.0,0.0,s,gsm8k\nb,1.0,1.0,s,gsm8k\n")
    labels = read_labels(path)
    assert labels.tiers == ("weak", "strong")
    assert [e.group for e in labels.examples] == ["a", "b"]  # one task: held out by problem


def test_round_trip_and_refusals(tmp_path):
    labels = Labels(("s", "l"), [Example("x, \"y\"\nz", (0.25, 1.0), "t", -0.5, "t")])
    write_labels(labels, tmp_path / "out.csv")
    again = read_labels(tmp_path / "out.csv")
    assert again.tiers == labels.tiers and again.examples[0].scores == (0.25, 1.0)
    assert again.examples[0].prompt == "x, \"y\"\nz" and again.examples[0].confidence == -0.5
    (tmp_path / "one.csv").write_text("prompt,a_score\nq,1\n")
    with pytest.raises(ValueError, match="two or more"):
        read_labels(tmp_path / "one.csv")
    (tmp_path / "other.csv").write_text("prompt,x_score,y_score\nq,1,0\n")
    with pytest.raises(ValueError, match="other files"):
        read_labels(tmp_path / "out.csv", tmp_path / "other.csv")
