"""`SamplingRecord`: a distilled model's step counts and guidance range, to and from model_index.json."""

import pytest

from diffusion.io.sampling_record import SamplingRecord

WHERE = "m/model_index.json"


def test_the_record_round_trips_through_its_dict():
    record = SamplingRecord("progressive", (1, 2, 4), 4, (1.0, 4.0))
    data = record.to_dict()
    assert data == {"method": "progressive", "steps": [1, 2, 4], "default_steps": 4, "guidance_range": [1.0, 4.0]}
    assert SamplingRecord.from_dict(data, WHERE) == record
    unguided = SamplingRecord.from_dict({"method": "progressive", "steps": [2], "default_steps": 2}, WHERE)
    assert (unguided.steps, unguided.guidance_range, unguided.to_dict()["guidance_range"]) == ((2,), None, None)
    assert SamplingRecord("p", [1, 8], 8, [0, 2]).guidance_range == (0.0, 2.0)  # lists and ints are taken


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": [2, 1]}, r"sampling\.steps must be ascending and without repeats, got \[2, 1\]$"),
        ({"steps": [1, 1, 4]}, r"sampling\.steps must be ascending and without repeats"),
        ({"steps": [0, 4]}, r"sampling\.steps must be a non-empty list of step counts >= 1, got \[0, 4\]$"),
        ({"steps": []}, r"sampling\.steps must be a non-empty list"),
        ({"steps": [1.5, 4]}, r"sampling\.steps must be a non-empty list"),
        ({"steps": "4"}, r"sampling\.steps must be a non-empty list"),
        ({"default_steps": 3}, r"sampling\.default_steps must be one of steps \[1, 2, 4\], got 3$"),
        ({"default_steps": True}, r"sampling\.default_steps must be one of steps"),
        ({"method": ""}, r"sampling\.method must be a non-empty name such as 'progressive', got ''$"),
        ({"guidance_range": [4, 1]}, r"sampling\.guidance_range must be \[min, max\] with 0 <= min <= max"),
        ({"guidance_range": [-1, 1]}, r"sampling\.guidance_range must be \[min, max\]"),
        ({"guidance_range": [1, float("inf")]}, r"sampling\.guidance_range must be \[min, max\]"),
        ({"guidance_range": [1]}, r"sampling\.guidance_range must be \[min, max\]"),
        ({"guidance_range": 2.0}, r"sampling\.guidance_range must be \[min, max\]"),
        ({"steps_": [1]}, r"sampling has unknown field\(s\) \['steps_'\]; it holds method, steps, default_steps"),
    ],
)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(change, message):
    data = {"method": "progressive", "steps": [1, 2, 4], "default_steps": 4, "guidance_range": [1, 4]} | change
    with pytest.raises(ValueError, match=rf"^{WHERE}: {message}") as error:
        SamplingRecord.from_dict(data, WHERE)
    assert "\n" not in str(error.value)


def test_a_missing_field_or_a_record_that_is_no_object_is_refused():
    with pytest.raises(ValueError, match=rf"^{WHERE}: sampling has no field\(s\) \['default_steps'\]"):
        SamplingRecord.from_dict({"method": "progressive", "steps": [4]}, WHERE)
    with pytest.raises(ValueError, match=rf"^{WHERE}: sampling must be an object, got \[4\]$"):
        SamplingRecord.from_dict([4], WHERE)


def test_step_counts_and_guidance_scales_outside_the_record_are_refused():
    record = SamplingRecord("progressive", (1, 2, 4), 4, (1.0, 4.0))
    assert [record.check_steps(n) for n in (1, 2, 4)] == [1, 2, 4]
    for bad in (3, 8, 4.0, True, "4"):
        with pytest.raises(ValueError, match=r"^this distilled model samples with 1, 2 or 4 steps; got .* \(num_inf"):
            record.check_steps(bad)
    record.check_guidance_scale(1.0)
    record.check_guidance_scale(4.0)
    with pytest.raises(ValueError, match=r"^this guidance-distilled model was trained for guidance_scale in \[1, 4\]"):
        record.check_guidance_scale(4.5)
    SamplingRecord("progressive", (4,), 4).check_guidance_scale(9.0)  # unguided: no range to keep to
    assert SamplingRecord("progressive", (4,), 4).steps_text() == "4"


def test_a_consistency_record_takes_any_step_count_with_one_network():
    record = SamplingRecord("consistency", (1, 2, 4), 4, (1.0, 2.0))
    assert record.any_steps and record.student_steps == ()  # one network: no weights per step count
    assert [record.check_steps(n) for n in (1, 2, 3, 4, 7, 1000)] == [1, 2, 3, 4, 7, 1000]
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(
            ValueError,
            match=r"^this consistency-distilled model samples with any step count >= 1 \(1, 2 or 4 recommended\); got",
        ):
            record.check_steps(bad)
    progressive = SamplingRecord("progressive", (1, 2, 4), 4)
    assert not progressive.any_steps and progressive.student_steps == (1, 2)
    assert SamplingRecord.from_dict(record.to_dict(), WHERE) == record
