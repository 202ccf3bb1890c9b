"""The app's outbox: one folder per request, only the newest kept."""

from PIL import Image

from diffusion.app import Outbox


def test_only_the_newest_request_folders_are_kept(tmp_path):
    outbox = Outbox(tmp_path, keep=3)
    folders = [outbox.folder() for _ in range(5)]
    assert [f.name for f in folders] == ["000000", "000001", "000002", "000003", "000004"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000002", "000003", "000004"]


def test_images_are_named_by_seed_and_carry_their_metadata(tmp_path):
    images = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(2)]
    paths, archive = Outbox(tmp_path).images(images, [{"seed": 5, "class": "a"}, {"seed": 6, "class": "b"}])
    assert [p.name for p in paths] == ["5.png", "6.png"] and archive.name == "images.zip"
    with Image.open(paths[1]) as png:
        assert png.text == {"seed": "6", "class": "b"} and png.getpixel((0, 0)) == (1, 0, 0)


def test_an_interpolation_is_a_strip_and_a_gif(tmp_path):
    frames = [Image.new("L", (4, 4), v) for v in (0, 128, 255)]
    strip, gif = Outbox(tmp_path).interpolation(frames, {"from": "1", "to": "2"})
    with Image.open(strip) as png, Image.open(gif) as animation:
        assert png.size == (3 * 6 + 2, 8) and png.text == {"from": "1", "to": "2"} and animation.n_frames == 3
