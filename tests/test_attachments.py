"""Sorting a message's files before any download: images to look at, documents to read, notes, refusals."""

from core.attachments import AttachedFile, Vetted, refused, vet_attachments
from core.documents import DocumentKind, DocumentSource
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


def test_a_file_that_is_neither_an_image_nor_a_document_gets_a_note_and_no_download() -> None:
    vetted = vet_attachments([image("song.mp3", kind="audio/mpeg"), image("cat.png")], LIMITS, platform="Discord")
    assert [source.name for source in vetted.images] == ["cat.png"]
    assert vetted.notes == ["song.mp3 is not an image, a text file or a PDF, so it was not read."]
    assert vetted.refusals == [] and vetted.documents == []


def test_text_files_and_pdfs_are_documents_to_read_with_their_headers() -> None:
    files = [
        AttachedFile("report.pdf", "application/pdf", 2000, "https://files.example/r", {"Authorization": "Bearer t"}, "sign in"),
        AttachedFile("notes.txt", "text/plain; charset=utf-8", 10, "https://files.example/n"),
        AttachedFile("main.py", "", None, "https://files.example/m"),  # no declared type: the extension says text
        AttachedFile("data.csv", "application/octet-stream", 10, "https://files.example/d"),
        AttachedFile("page.html", "text/html", 10, "https://files.example/p"),
    ]
    vetted = vet_attachments(files, LIMITS, platform="Slack")
    assert vetted.documents == [
        DocumentSource("report.pdf", "https://files.example/r", DocumentKind.PDF, {"Authorization": "Bearer t"}, 2000, "sign in"),
        DocumentSource("notes.txt", "https://files.example/n", DocumentKind.TEXT, {}, 10),
        DocumentSource("main.py", "https://files.example/m", DocumentKind.TEXT),
        DocumentSource("data.csv", "https://files.example/d", DocumentKind.TEXT, {}, 10),
    ]
    assert vetted.documents[0].headers == {"Authorization": "Bearer t"}
    assert vetted.notes == ["page.html is not an image, a text file or a PDF, so it was not read."]
    assert vetted.images == [] and vetted.refusals == []


def test_documents_declared_over_their_limit_or_beyond_five_are_refused_or_skipped_unread() -> None:
    files = [
        image("big.txt", size=2 * MB, kind="text/plain"),
        image("big.pdf", size=21 * MB, kind="application/pdf"),
        image("fine.pdf", size=19 * MB, kind="application/pdf"),
        *(image(f"n{i}.md", kind="text/markdown") for i in range(5)),
    ]
    vetted = vet_attachments(files, LIMITS, platform="Discord")
    assert [source.name for source in vetted.documents] == ["fine.pdf", "n0.md", "n1.md"]
    assert vetted.refusals == ["big.txt is over the 1 MB limit for text files.", "big.pdf is over the 20 MB limit for PDFs."]
    assert vetted.notes == ["At most 5 text files or PDFs are read per request, so these were skipped: n2.md, n3.md, n4.md."]


def test_a_document_link_is_followed_only_where_the_platform_allows() -> None:
    files = [image("a.txt", kind="text/plain", url="https://elsewhere/a"), image("b.txt", kind="text/plain", url=None)]
    vetted = vet_attachments(files, LIMITS, platform="Slack", may_download=lambda url: False)
    assert vetted.documents == []
    assert vetted.refusals == [
        "Could not download a.txt: its link is not on Slack's file hosts, so it was not followed.",
        "Could not download b.txt: Slack gave no link to it.",
    ]


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


def test_only_refused_files_make_a_refusal_with_the_notes_beneath() -> None:
    vetted = Vetted(
        [],
        ["song.mp3 is not an image, a text file or a PDF, so it was not read."],
        ["huge.png is over the 20 MB limit for images."],
    )
    reply = refused(vetted)
    assert reply is not None
    assert reply.outcome is Outcome.REFUSED
    assert reply.text == "huge.png is over the 20 MB limit for images."
    assert reply.notes == ("song.mp3 is not an image, a text file or a PDF, so it was not read.",)


def test_there_is_something_to_answer_when_a_file_is_left_or_none_was_refused() -> None:
    source = ImageSource("cat.png", "https://files.example/cat")
    document = DocumentSource("notes.txt", "https://files.example/notes", DocumentKind.TEXT)
    assert refused(Vetted([source], [], ["huge.png is over the 20 MB limit for images."])) is None
    assert refused(Vetted([], [], ["huge.png is over the 20 MB limit for images."], [document])) is None
    assert refused(Vetted([], ["song.mp3 is not an image, a text file or a PDF, so it was not read."], [])) is None
    assert refused(Vetted([], [], [])) is None
