"""Sorting a message's files before any download: images to read, notes, refusals."""

from core.attachments import AttachedFile, Vetted, refused, vet_attachments
from core.errors import Outcome
from core.images import ImageLimits, ImageSource

LIMITS = ImageLimits()
MB = 1024 * 1024


def image(
    name: str, *, size: int | None = 1000, url: str | None = "https://files.example/x", kind: str = "image/png"
) -> AttachedFile:
    return AttachedFile(name, kind, size=size, url=url)


def test_images_are_kept_in_order_with_their_headers_and_size() -> None:
    cat = AttachedFile("cat.png", "image/png", size=1234, url="https://files.example/cat", headers={"Authorization": "Bearer t"})
    dog = AttachedFile("dog.jpg", "IMAGE/JPEG; charset=binary", size=0, url="https://files.example/dog", html_refusal="sign in")
    vetted = vet_attachments([cat, dog], LIMITS, platform="Slack")
    assert vetted.images == [
        ImageSource("cat.png", "https://files.example/cat", headers={"Authorization": "Bearer t"}, size=1234),
        ImageSource("dog.jpg", "https://files.example/dog", size=None, html_refusal="sign in"),  # 0 bytes: unknown
    ]
    assert vetted.notes == [] and vetted.refusals == []


def test_a_file_that_is_not_an_image_gets_a_note_and_no_download() -> None:
    vetted = vet_attachments([image("report.pdf", kind="application/pdf"), image("cat.png")], LIMITS, platform="Discord")
    assert [source.name for source in vetted.images] == ["cat.png"]
    assert vetted.notes == ["report.pdf is not an image, so it was not read."]
    assert vetted.refusals == []


def test_images_beyond_the_limit_are_skipped_by_name() -> None:
    files = [image(f"p{i}.png") for i in range(12)]
    vetted = vet_attachments(files, LIMITS, platform="Discord")
    assert [source.name for source in vetted.images] == [f"p{i}.png" for i in range(10)]
    assert vetted.notes == ["At most 10 images are taken per request, so these were skipped: p10.png, p11.png."]


def test_an_image_declared_over_the_size_limit_is_refused_unread() -> None:
    vetted = vet_attachments([image("huge.png", size=30 * MB), image("small.png", size=None)], LIMITS, platform="Discord")
    assert [source.name for source in vetted.images] == ["small.png"]
    assert vetted.refusals == ["huge.png is over the 20 MB limit for images."]


def test_an_image_type_the_vision_model_does_not_take_is_refused_unread() -> None:
    vetted = vet_attachments([image("scan.tiff", kind="image/tiff")], LIMITS, platform="Slack")
    assert vetted.images == []
    assert vetted.refusals == ["scan.tiff is not a JPEG, PNG, WEBP or GIF image."]


def test_a_link_is_followed_only_where_the_platform_allows() -> None:
    files = [
        image("mine.png", url="https://files.slack.com/a"),
        image("foreign.png", url="https://elsewhere/b"),
        image("none.png", url=None),
    ]
    vetted = vet_attachments(files, LIMITS, platform="Slack", may_download=lambda url: "files.slack.com" in url)
    assert [source.name for source in vetted.images] == ["mine.png"]
    assert vetted.refusals == [
        "Could not download foreign.png: its link is not on Slack's file hosts, so it was not followed.",
        "Could not download none.png: Slack gave no link to it.",
    ]


def test_only_refused_images_make_a_refusal_with_the_notes_beneath() -> None:
    vetted = Vetted([], ["notes.pdf is not an image, so it was not read."], ["huge.png is over the 20 MB limit for images."])
    reply = refused(vetted)
    assert reply is not None
    assert reply.outcome is Outcome.REFUSED
    assert reply.text == "huge.png is over the 20 MB limit for images."
    assert reply.notes == ("notes.pdf is not an image, so it was not read.",)


def test_there_is_something_to_answer_when_an_image_is_left_or_none_was_refused() -> None:
    source = ImageSource("cat.png", "https://files.example/cat")
    assert refused(Vetted([source], [], ["huge.png is over the 20 MB limit for images."])) is None
    assert refused(Vetted([], ["notes.pdf is not an image, so it was not read."], [])) is None
    assert refused(Vetted([], [], [])) is None
