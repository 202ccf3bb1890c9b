"""The app's actions without the page: each is one pipeline call, so its images are the pipeline's own."""

import dataclasses
import math
import zipfile

import numpy as np
import pytest
from PIL import Image
from students import student_pipeline  # tests/ is on sys.path

from diffusion import DiffusionPipeline
from diffusion.app.actions import (
    Limits,
    Sampling,
    class_labels,
    edit,
    generate,
    interpolate,
    painted_mask,
    upload,
    whole_number,
)
from diffusion.app.models import ModelShelf

LIMITS = Limits(max_images=8, max_steps=20, max_size=16)


def pixels(images):
    return np.stack([np.array(image) for image in images])


def test_generate_gives_the_pipelines_own_images_with_their_seeds_and_classes(shelf, outbox, settings):
    s = settings()
    result = generate(shelf, s, LIMITS, outbox)
    pipe = DiffusionPipeline.from_pretrained(s.model)
    own = pipe(3, 4, "ddim", seed=7, class_labels="random", guidance_scale=1.5, batch_size=2)
    assert np.array_equal(pixels(result.images), pixels(own))  # pixel for pixel
    classes = [pipe.class_names[i] for i in pipe.random_class_labels(3, 7).tolist()]
    assert result.captions == [f"seed {7 + i} · {c} · ddim, 4 steps, w 1.5" for i, c in enumerate(classes)]
    assert result.summary.startswith("3 images in ") and "4 NFE per image (ddim, 4 steps" in result.summary


def test_generate_writes_pngs_that_carry_their_settings_and_a_zip_of_them(shelf, outbox, settings):
    result = generate(shelf, settings(class_choice="dog"), LIMITS, outbox)
    assert [p.name for p in result.paths] == ["7.png", "8.png", "9.png"]
    assert result.download == [*result.paths, result.paths[0].parent / "images.zip"]
    with Image.open(result.paths[1]) as png:
        assert png.size == (8, 8) and png.mode == "L"
        assert {k: png.text[k] for k in ("seed", "class", "sampler", "steps", "nfe", "guidance_scale", "dtype")} == {
            "seed": "8",
            "class": "dog",
            "sampler": "ddim",
            "steps": "4",
            "nfe": "4",
            "guidance_scale": "1.5",
            "dtype": "fp32",
        }
        assert np.array_equal(np.array(png), np.array(result.images[1]))
    with zipfile.ZipFile(result.download[-1]) as zipped:
        assert sorted(zipped.namelist()) == ["7.png", "8.png", "9.png"]


def test_the_batch_size_does_not_change_the_images(shelf, outbox, settings):
    one = generate(shelf, settings(batch_size=1), LIMITS, outbox)
    all_at_once = generate(shelf, settings(batch_size=3), LIMITS, outbox)
    assert np.array_equal(pixels(one.images), pixels(all_at_once.images))


@pytest.mark.parametrize(("sampler", "nfe"), [("ddim", 4), ("heun", 7)])  # Heun: 2n - 1 evaluations
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_progress_counts_every_model_evaluation_of_every_batch(shelf, outbox, settings, batch_size, sampler, nfe):
    seen = []
    s = settings(batch_size=batch_size, sampler=sampler)
    result = generate(shelf, s, LIMITS, outbox, lambda done, total: seen.append((done, total)))
    total = math.ceil(3 / batch_size) * nfe
    assert seen == [(i, total) for i in range(1, total + 1)] and f"{nfe} NFE per image" in result.summary


def test_a_request_may_do_the_work_of_max_images_at_max_steps(shelf, outbox, settings):
    picture = Image.new("L", (8, 8), 50)
    mask = Image.new("L", (8, 8), 255)
    s = settings(class_choice="none", num_images=8, steps=20)
    assert len(edit(shelf, s, LIMITS, outbox, picture, mask).images) == 8  # 8 x 20 evaluations: the most
    with pytest.raises(ValueError) as error:  # RePaint at resample 2 doubles the 8 x 20 evaluations allowed
        edit(shelf, s, LIMITS, outbox, picture, mask, resample=2, jump_length=2)
    assert str(error.value) == (
        "this request needs 320 model evaluations; this app does at most 160 per request (diffusion-app "
        "--max-images x --max-steps): ask for fewer images, steps or RePaint resamples"
    )


def test_an_unconditional_model_takes_no_class_and_no_guidance(shelf, outbox, settings, tiny_model):
    result = generate(shelf, settings(model=str(tiny_model), class_choice="none", guidance_scale=3.0), LIMITS, outbox)
    own = DiffusionPipeline.from_pretrained(tiny_model)(3, 4, "ddim", seed=7)
    assert np.array_equal(pixels(result.images), pixels(own))
    assert result.captions[0] == "seed 7 · none · ddim, 4 steps"
    with Image.open(result.paths[0]) as png:
        assert "guidance_scale" not in png.text and png.text["class"] == "none"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"num_images": 9},
            "9 images were asked for; this app makes at most 8 per request (diffusion-app --max-images)",
        ),
        ({"steps": 21}, "21 steps were asked for; this app runs at most 20 per request (diffusion-app --max-steps)"),
        ({"class_choice": "cow"}, "unknown class 'cow'; this model knows ids 0-1: cat, dog"),
        ({"sampler": "nope"}, "unknown scheduler 'nope'; expected one of 'ddpm', 'ddim'"),
        ({"steps": 0}, "num_inference_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"model": "no/such/folder"}, "unknown model 'no/such/folder'"),
        ({"dtype": "fp8"}, "unknown dtype 'fp8'; choose one of fp32, bf16, fp16"),
    ],
)
def test_bad_settings_raise_one_line_messages(shelf, outbox, settings, changes, message):
    with pytest.raises(ValueError) as error:
        generate(shelf, settings(**changes), LIMITS, outbox)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["guidance_scale", "guidance_rescale"])
def test_guidance_from_the_page_must_be_a_number(settings, name):
    values = {f.name: getattr(settings(), f.name) for f in dataclasses.fields(Sampling)} | {name: None}
    with pytest.raises(ValueError, match=rf"^{name.replace('_', ' ')} must be a number, got None$"):
        Sampling.from_page(**values)


def test_an_unreadable_upload_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"^the start image is not a readable image \(UnidentifiedImageError: "):
        upload(str(tmp_path / "notes.png"), "the start image")
    Image.new("LA", (4, 4), (10, 128)).save(tmp_path / "grey.png")
    assert upload(str(tmp_path / "grey.png"), "x").getpixel((0, 0)) == (10, 10, 10, 128)


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (3.0, 3), (-2.0, -2)])
def test_whole_numbers_from_number_boxes(value, expected):
    assert whole_number(value, "seed") == expected and type(whole_number(value, "seed")) is int


@pytest.mark.parametrize("value", [2.5, None, "3", True])
def test_other_values_are_not_whole_numbers(value):
    with pytest.raises(ValueError, match=rf"^seed must be a whole number, got {value!r}$"):
        whole_number(value, "seed")


def test_random_classes_are_the_ones_the_pipeline_draws(tiny_conditional_pipeline):
    labels, names = class_labels(tiny_conditional_pipeline, "random", 5, 4)
    drawn = tiny_conditional_pipeline.random_class_labels(4, 5).tolist()
    assert labels == "random" and names == [("cat", "dog")[i] for i in drawn]
    assert class_labels(tiny_conditional_pipeline, "none", 5, 2) == (None, ["none", "none"])
    assert class_labels(tiny_conditional_pipeline, "cat", 5, 2) == ("cat", ["cat", "cat"])


# ----- editing -----


@pytest.fixture
def picture():
    return Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).convert("RGBA")  # as the editor sends


def painted(box):
    """An editor layer with paint (alpha 255) in ``box`` and nothing elsewhere."""
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.paste((255, 0, 255, 255), box)
    return layer


def test_painted_mask_is_white_where_any_layer_has_paint(picture):
    mask = painted_mask(picture, [painted((0, 0, 2, 8)), None, painted((6, 6, 8, 8))])
    expected = np.zeros((8, 8), np.uint8)
    expected[:, :2] = 255
    expected[6:, 6:] = 255
    assert mask.mode == "L" and np.array_equal(np.array(mask), expected)


def test_inpainting_keeps_the_unpainted_pixels_and_is_the_pipelines_own(shelf, outbox, settings, picture):
    mask = painted_mask(picture, [painted((2, 2, 6, 6))])
    s = settings(class_choice="none", num_images=2)
    seen = []
    result = edit(
        shelf, s, LIMITS, outbox, picture, mask, resample=2, jump_length=2, progress=lambda *p: seen.append(p)
    )
    assert seen[-1] == (8, 8) and len(seen) == 8  # one batch of RePaint's 8 evaluations
    keep = np.array(mask) == 0
    grey = np.array(picture.convert("L"))
    for image in result.images:
        assert np.array_equal(np.array(image)[keep], grey[keep]) and not np.array_equal(np.array(image), grey)
    own = DiffusionPipeline.from_pretrained(s.model)(
        2, 4, "ddim", seed=7, batch_size=2, image=picture, mask_image=mask, resample=2, jump_length=2
    )
    assert np.array_equal(pixels(result.images), pixels(own))
    assert "8 NFE per image" in result.summary  # RePaint: resample 2 doubles the 4 steps
    with Image.open(result.paths[0]) as png:
        assert (png.text["strength"], png.text["resample"], png.text["jump_length"]) == ("1.0", "2", "2")


def test_img2img_without_a_mask_uses_the_strength(shelf, outbox, settings, picture):
    s = settings(class_choice="none", num_images=1)
    result = edit(shelf, s, LIMITS, outbox, picture, None, strength=0.5)
    own = DiffusionPipeline.from_pretrained(s.model)(1, 4, "ddim", seed=7, image=picture, strength=0.5)
    assert np.array_equal(pixels(result.images), pixels(own))
    assert "2 NFE per image" in result.summary
    with Image.open(result.paths[0]) as png:
        assert png.text["strength"] == "0.5" and "resample" not in png.text


@pytest.mark.parametrize(
    ("image", "layers", "message"),
    [
        (None, [], "there is no image to edit: upload one, or send one from the Generate tab"),
        ("picture", [], "the mask has no white pixel"),
        ("big", [], "the image is 17x8; this app takes images of at most 16 pixels a side (diffusion-app --max-size)"),
        ("odd", [], "the image is 7x7; its sides must be multiples of"),
    ],
)
def test_bad_edits_raise_one_line_messages(shelf, outbox, settings, picture, image, layers, message):
    image = {"picture": picture, "big": Image.new("RGBA", (8, 17)), "odd": Image.new("RGBA", (7, 7))}.get(image)
    mask = painted_mask(image, layers) if image is not None else None
    with pytest.raises(ValueError) as error:
        edit(shelf, settings(), LIMITS, outbox, image, mask)
    assert message in str(error.value)


# ----- interpolation -----


def test_interpolating_two_seeds_gives_their_images_at_the_ends(shelf, outbox, settings):
    s = settings(class_choice="cat", num_images=4, batch_size=4, sampler="heun")  # the sampler is ignored: DDIM
    result = interpolate(shelf, s, LIMITS, outbox, (3, 11))
    pipe = DiffusionPipeline.from_pretrained(s.model)
    ends = pipe(2, 4, "ddim", eta=0, seed=[3, 11], class_labels="cat", guidance_scale=1.5)
    assert len(result.images) == 4
    assert np.array_equal(np.array(result.images[0]), np.array(ends[0]))
    assert np.array_equal(np.array(result.images[-1]), np.array(ends[1]))
    strip, gif = result.paths
    with Image.open(strip) as png, Image.open(gif) as animation:
        assert png.size == (4 * 10 + 2, 12) and png.text["from"] == "3" and png.text["to"] == "11"
        assert animation.n_frames == 4
    assert result.captions[0] == "frame 0 of 4: 3 → 11" and "ddim, 4 steps" in result.summary


@pytest.mark.parametrize("choice", ["none", "cat"])
def test_interpolating_from_an_image_inverts_it_with_the_frames_class(shelf, outbox, settings, picture, choice):
    s = settings(class_choice=choice, num_images=2, batch_size=2, guidance_rescale=0.5)
    result = interpolate(shelf, s, LIMITS, outbox, (picture, 5))
    pipe = DiffusionPipeline.from_pretrained(s.model)
    guided = {"class_labels": "cat", "guidance_scale": 1.5} if choice == "cat" else {}
    start = pipe.invert(picture, 4, **guided)[0]
    rescale = {"guidance_rescale": 0.5} if guided else {}
    own = pipe.interpolate(start, 5, num_frames=2, num_inference_steps=4, **guided, **rescale)
    assert np.array_equal(pixels(result.images), pixels(own))
    assert result.captions[-1] == "frame 1 of 2: image → 5"
    assert result.summary.endswith(", after inverting 1 image(s) in 8 NFE each")


def test_too_many_frames_are_named_frames(shelf, outbox, settings):
    with pytest.raises(ValueError, match=r"^9 frames were asked for; this app makes at most 8 per request"):
        interpolate(shelf, settings(num_images=9), LIMITS, outbox, (1, 2))


def test_a_random_class_needs_a_start_seed(shelf, outbox, settings, picture):
    with pytest.raises(ValueError, match="class random draws the start seed's class, and the start is an image"):
        interpolate(shelf, settings(class_choice="random"), LIMITS, outbox, (picture, 5))


@pytest.fixture(scope="module")
def student_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "model"
    student_pipeline().save_pretrained(path)
    return path


def test_a_distilled_model_samples_at_its_default_steps_when_the_box_is_empty(student_model, outbox, settings):
    shelf = ModelShelf([str(student_model)])
    s = settings(model=str(student_model), steps=None, class_choice="a", guidance_scale=2.0)
    result = generate(shelf, s, LIMITS, outbox)
    own = DiffusionPipeline.from_pretrained(student_model)(3, seed=7, class_labels="a", guidance_scale=2.0)
    assert np.array_equal(pixels(result.images), pixels(own))
    assert result.captions[0] == "seed 7 · a · ddim, 4 steps, w 2"
    assert "4 NFE per image (ddim, 4 steps; guidance evaluates in one pass (guidance-distilled))" in result.summary
    with pytest.raises(ValueError, match=r"^this distilled model samples with 1, 2 or 4 steps; got 3 \(num_inf"):
        generate(shelf, dataclasses.replace(s, steps=3), LIMITS, outbox)
    frames = interpolate(shelf, dataclasses.replace(s, num_images=2), LIMITS, outbox, (0, 1))
    assert "(ddim, 4 steps;" in frames.summary
    assert Sampling.from_page(**dataclasses.asdict(s)).steps is None  # an empty Steps box
