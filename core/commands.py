"""The command grammar, the same on every platform: `/io <line>` in Slack, an @mention, a DM, the console.

A line whose first word is no command is a question. A command with missing or malformed arguments
raises `UsageError`, whose message is the command's usage line. `help` text is generated from here.

Lines come from people, pasted from anywhere, so the grammar takes any string: words are separated by
any Unicode space (no-break and ideographic spaces too) or zero-width space, command words are
compared in their plain form (`help` in fullwidth letters is `help`), and only decimal digits make a number, whose
size is checked before it is converted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SUMMARY_WORDS = 1000
DEFAULT_SUMMARY_WORDS = 100
DEFAULT_VISION_QUESTION = "What is in this image?"
MAX_LABELS = 20
MAX_LABEL_CHARS = 50
MAX_LANGUAGE_CHARS = 40
MAX_COMMAND_WORD = 20  # longer first words are no command, and are not normalised

# Characters that separate words: every Unicode space, and the invisible ones that are spaces in all but
# name (zero-width space, word joiner, byte order mark, Mongolian vowel separator).
INVISIBLE_SPACES = "\u200b\u2060\ufeff\u180e"
SEPARATORS = "".join(ch for ch in map(chr, range(0x3001)) if ch.isspace()) + INVISIBLE_SPACES
SEPARATOR = re.compile(f"[{re.escape(SEPARATORS)}]+")
NUMBER_LIKE = re.compile(r"[+-]*\d+")  # what a word count looks like, well formed or not
WHOLE_NUMBER = re.compile(r"\+?\d{1,9}")  # \d is any decimal digit, all of which int() reads


@dataclass(frozen=True)
class Command:
    """A parsed command line. `text` is the question, problem or text to work on."""

    name: str
    text: str = ""
    language: str = ""  # translate
    labels: tuple[str, ...] = ()  # classify
    max_words: int = DEFAULT_SUMMARY_WORDS  # summarize
    image: str = ""  # vision: a URL (or, in the console, a file path)
    topic: str = ""  # help: the command to explain


class UsageError(ValueError):
    """The command's arguments are missing or malformed; `str()` is its usage line."""

    def __init__(self, spec: CommandSpec) -> None:
        super().__init__(f"Usage: {spec.usage}")
        self.spec = spec


@dataclass(frozen=True)
class CommandSpec:
    name: str
    arguments: str
    description: str
    parse: Callable[[str], Command | None] = field(repr=False)  # None means: show the usage line
    takes_text: bool = True  # False: the command takes no arguments, so extra words make a question

    @property
    def usage(self) -> str:
        return f"{self.name} {self.arguments}".strip()


def trim(text: str) -> str:
    """`text` without the spaces, visible or not, around it."""
    return text.strip(SEPARATORS)


def split_word(text: str) -> tuple[str, str]:
    """The first word and the rest; the rest keeps its own spacing and line breaks."""
    text = trim(text)
    separator = SEPARATOR.search(text)
    if separator is None:
        return text, ""
    return text[: separator.start()], trim(text[separator.end() :])


def plain_word(word: str) -> str:
    """A word in the form commands are compared in: compatibility-normalised, format characters dropped, casefolded."""
    word = unicodedata.normalize("NFKC", word)
    return "".join(ch for ch in word if unicodedata.category(ch) != "Cf").casefold()


def command_name(word: str) -> str:
    """The command a first word names, or "" (a long word is no command, and is not normalised)."""
    return plain_word(word) if len(word) <= MAX_COMMAND_WORD else ""


def word_count(word: str) -> int | None:
    """A summary's word count as written (decimal digits, an optional +), or None when it is no whole number."""
    return int(word) if WHOLE_NUMBER.fullmatch(word) else None


def _text(name: str) -> Callable[[str], Command | None]:
    return lambda rest: Command(name, text=rest) if rest else None


def _summarize(rest: str) -> Command | None:
    first, text = split_word(rest)
    if NUMBER_LIKE.fullmatch(first):  # "2", but also "-5", "+-5" and a 5,000-digit number
        words = word_count(first)
        if words is None or not 1 <= words <= MAX_SUMMARY_WORDS or not text:
            return None
        return Command("summarize", text=text, max_words=words)
    return Command("summarize", text=rest) if rest else None


def _translate(rest: str) -> Command | None:
    language, text = split_word(rest)
    language = _argument(language)
    if not text or not 0 < len(language) <= MAX_LANGUAGE_CHARS or not any(ch.isalpha() for ch in language):
        return None
    return Command("translate", text=text, language=language)


def _classify(rest: str) -> Command | None:
    labels_word, text = split_word(rest)
    labels = parse_labels(labels_word)
    if labels is None or not text:
        return None
    return Command("classify", text=text, labels=labels)


def parse_labels(word: str) -> tuple[str, ...] | None:
    """Comma-separated labels, each once (whatever its case), or None unless there are 2 to MAX_LABELS short ones."""
    labels: dict[str, str] = {}
    for label in _argument(word).split(","):
        label = trim(label)
        if label:
            labels.setdefault(label.casefold(), label)
    if not 2 <= len(labels) <= MAX_LABELS or any(len(label) > MAX_LABEL_CHARS for label in labels.values()):
        return None
    return tuple(labels.values())


def _argument(word: str) -> str:
    """A language or labels as sent to the API: compatibility-normalised, without invisible characters, case kept."""
    word = unicodedata.normalize("NFKC", word)
    return "".join(ch for ch in word if unicodedata.category(ch) != "Cf")


def _vision(rest: str) -> Command | None:
    image, question = split_word(rest)
    return Command("vision", image=image, text=question or DEFAULT_VISION_QUESTION) if image else None


def _help(rest: str) -> Command | None:
    return Command("help", topic=command_name(split_word(rest)[0]))


def _bare(name: str) -> Callable[[str], Command | None]:
    return lambda rest: Command(name)


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("ask", "<question>", "Ask the model anything. Any line that starts with no command word is a question too.", _text("ask")),
        CommandSpec("summarize", "[max_words] <text>", f"Summarize text in at most max_words words (default {DEFAULT_SUMMARY_WORDS}), with its key points.", _summarize),
        CommandSpec("translate", "<language> <text>", "Translate text into a language.", _translate),
        CommandSpec("sentiment", "<text>", "Tell whether text is positive, neutral or negative.", _text("sentiment")),
        CommandSpec("classify", "<label,label,...> <text>", "Put text into one of two or more labels.", _classify),
        CommandSpec("moderate", "<text>", "Score text for profanity, hate, harassment, self-harm and other risks.", _text("moderate")),
        CommandSpec("entities", "<text>", "List the people, organizations, places, dates and events in text.", _text("entities")),
        CommandSpec("reason", "<problem>", "Work through a problem step by step.", _text("reason")),
        CommandSpec("vision", "<image-url> [question]", "Ask about an image. Attaching images to a message works too.", _vision),
        CommandSpec("agents", "", "List the AI agents the service offers.", _bare("agents"), takes_text=False),
        CommandSpec("models", "", "List the models with their daily quota and today's use.", _bare("models"), takes_text=False),
        CommandSpec("usage", "", "Show your own use today and what is left.", _bare("usage"), takes_text=False),
        CommandSpec("help", "[command]", "Show this help, or one command's.", _help, takes_text=False),
    )
}


def parse_command(text: str) -> Command:
    """Parse one message of the grammar. Raises `UsageError` for a command with bad arguments."""
    line = trim(text)
    first, rest = split_word(line)
    if not first:
        return Command("help")
    spec = COMMANDS.get(command_name(first))
    if spec is None:
        return Command("ask", text=line)
    if not spec.takes_text and rest:
        topic = command_name(split_word(rest)[0])
        if spec.name == "help" and topic in COMMANDS:
            return Command("help", topic=topic)
        return Command("ask", text=line)  # "help me write a poem", "usage of semicolons?"
    command = spec.parse(rest)
    if command is None:
        raise UsageError(spec)
    return command


INFORMATIONAL = ("help", "agents", "models", "usage")  # answered at once, to the asker alone


def is_informational(text: str) -> bool:
    """Whether a line asks for help, agents, models or usage, or is malformed: answered at once, privately."""
    try:
        return parse_command(text).name in INFORMATIONAL
    except UsageError:
        return True


def help_text(topic: str = "") -> str:
    """The help, in the neutral markdown that adapters render: every command, or one."""
    if topic in COMMANDS:
        spec = COMMANDS[topic]
        return f"`{spec.usage}`\n{spec.description}"
    lines = ["**Commands**"]
    lines += [f"• `{spec.usage}`: {spec.description}" for spec in COMMANDS.values()]
    lines.append("Images attached to a message are analysed by a vision model, with the message as the question.")
    return "\n".join(lines)
