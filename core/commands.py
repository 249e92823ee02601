"""The command grammar, the same on every platform: `/io <line>` in Slack, an @mention, a DM, the console.

A line whose first word is no command is a question. A command with missing or malformed arguments
raises `UsageError`, whose message says what was wrong, with the usage line and an example. A first
argument of several words is quoted (`translate "Simplified Chinese" ...`). `help` text is generated
from here; none of this calls the API.

Lines come from people, pasted from anywhere, so the grammar takes any string: words are separated by
any Unicode space (no-break and ideographic spaces too) or zero-width space, command words are
compared in their plain form (`help` in fullwidth letters is `help`), and only decimal digits make a
number, whose size is checked before it is converted.
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
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(?=\S)")  # two letters at least: C:\photo.png is a path
QUOTES = ('"\u201c\u201d\u201e\u00ab\u00bb', "'\u2018\u2019")  # double quotes of any style, and single ones
ALIASES = {"/help": "help", "?": "help"}
MAX_SHOWN = 40  # characters of a person's word repeated in a usage message


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
    """A command's arguments are missing or malformed: `str()` says what was wrong, the usage line and an example."""

    def __init__(self, name: str, problem: str) -> None:
        self.spec = COMMANDS[name]
        self.problem = problem
        super().__init__(f"{problem}\nUsage: {self.spec.usage}\nExample: {self.spec.example}")


@dataclass(frozen=True)
class CommandSpec:
    name: str
    arguments: str
    description: str
    example: str
    parse: Callable[[str], Command] = field(repr=False)  # raises UsageError
    takes_text: bool = True  # False: the command takes no arguments, so extra words make a question
    details: str = ""  # more for `help <command>`

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
    """The command a first word names (`/help` and `?` are `help`), or "" for a long word, which is no command."""
    if len(word) > MAX_COMMAND_WORD:
        return ""
    name = plain_word(word)
    return ALIASES.get(name, name)


def word_count(word: str) -> int | None:
    """A summary's word count as written (decimal digits, an optional +), or None when it is no whole number."""
    return int(word) if WHOLE_NUMBER.fullmatch(word) else None


def first_argument(name: str, rest: str) -> tuple[str, str]:
    """The first argument and the text after it. An argument of several words is quoted: "Simplified Chinese"."""
    rest = trim(rest)
    quotes = next((family for family in QUOTES if rest[:1] and rest[0] in family), None)
    if quotes is None:
        return split_word(rest)
    end = min((found for found in (rest.find(ch, 1) for ch in quotes + "\n") if found != -1), default=-1)
    if end == -1 or rest[end] == "\n":
        raise UsageError(name, "A quote was opened and not closed on the same line.")
    return trim(rest[1:end]), trim(rest[end + 1 :])


def parse_language(language: str) -> str:
    """A language as sent to the API, its case kept (`pt-BR`); UsageError unless it looks like one."""
    language = _argument(language[: MAX_LANGUAGE_CHARS * 4])  # cut first: longer is refused anyway
    if not language:
        raise UsageError("translate", "Say which language to translate into, then the text.")
    if len(language) > MAX_LANGUAGE_CHARS or not any(ch.isalpha() for ch in language):
        raise UsageError("translate", f"{shown(language)} is not a language name.")
    return language


def parse_labels(labels: str) -> tuple[str, ...]:
    """Comma-separated labels, each once whatever its case; UsageError unless there are 2 to MAX_LABELS short ones."""
    if len(labels) > MAX_LABELS * (MAX_LABEL_CHARS + 1) * 2:  # refused before the work of reading them
        raise UsageError("classify", f"Give at most {MAX_LABELS} labels of at most {MAX_LABEL_CHARS} characters each.")
    found: dict[str, str] = {}
    for label in _argument(labels).split(","):
        label = trim(label)
        if label:
            found.setdefault(label.casefold(), label)
    if len(found) < 2:
        raise UsageError("classify", "Give two or more labels separated by commas, no spaces between (or quote them).")
    if len(found) > MAX_LABELS:
        raise UsageError("classify", f"Give at most {MAX_LABELS} labels.")
    if any(len(label) > MAX_LABEL_CHARS for label in found.values()):
        raise UsageError("classify", f"A label is at most {MAX_LABEL_CHARS} characters long.")
    return tuple(found.values())


def parse_image(image: str) -> str:
    """An image's address: an http(s) link or, in the console, a file path; UsageError for any other kind of link."""
    if not image:
        raise UsageError("vision", "Give a link to the image, then your question (or attach the image to a message).")
    scheme = URL_SCHEME.match(image)
    if scheme and scheme[1].lower() not in ("http", "https"):
        raise UsageError("vision", f"{shown(scheme[1] + ':')} links are not supported: give an http or https link to the image.")
    return image


def shown(word: str) -> str:
    """A person's word quoted in a reply, as code: cut short, without what could break out of the code or hide."""
    word = "".join(ch for ch in word[: MAX_SHOWN * 4] if ch == " " or (ch != "`" and unicodedata.category(ch)[0] not in "CZ"))
    word = word if len(word) <= MAX_SHOWN else word[: MAX_SHOWN - 1] + "…"
    return f"`{word}`" if word.strip() else "that"


def _argument(word: str) -> str:
    """A language or labels as sent to the API: compatibility-normalised, without invisible characters, case kept."""
    word = unicodedata.normalize("NFKC", word)
    return trim("".join(ch for ch in word if unicodedata.category(ch) != "Cf"))


def _text(name: str, problem: str) -> Callable[[str], Command]:
    def parse(rest: str) -> Command:
        if not rest:
            raise UsageError(name, problem)
        return Command(name, text=rest)

    return parse


def _summarize(rest: str) -> Command:
    first, text = split_word(rest)
    if NUMBER_LIKE.fullmatch(first):  # "2", but also "-5", "+-5" and a 5,000-digit number
        words = word_count(first)
        if words is None or not 1 <= words <= MAX_SUMMARY_WORDS:
            raise UsageError(
                "summarize",
                f"The word count must be a whole number from 1 to {MAX_SUMMARY_WORDS}, not {shown(first)}. "
                "Text that starts with a number needs a word count before it.",
            )
        if not text:
            raise UsageError("summarize", "Give the text to summarize after the word count.")
        return Command("summarize", text=text, max_words=words)
    if not rest:
        raise UsageError("summarize", "Give the text to summarize.")
    return Command("summarize", text=rest)


def _translate(rest: str) -> Command:
    language, text = first_argument("translate", rest)
    language = parse_language(language)
    if not text:
        raise UsageError("translate", f"Give the text to translate into {language} after the language.")
    return Command("translate", text=text, language=language)


def _classify(rest: str) -> Command:
    labels, text = first_argument("classify", rest)
    if not labels:
        raise UsageError("classify", "Give two or more labels separated by commas, then the text.")
    found = parse_labels(labels)
    if not text:
        raise UsageError("classify", "Give the text to classify after the labels.")
    return Command("classify", text=text, labels=found)


def _vision(rest: str) -> Command:
    image, question = first_argument("vision", rest)
    return Command("vision", image=parse_image(image), text=question or DEFAULT_VISION_QUESTION)


def _help(rest: str) -> Command:
    return Command("help", topic=_topic(split_word(rest)[0]))


def _topic(word: str) -> str:
    """The command `help <word>` asks about: its name when it is one, else the word as written."""
    name = command_name(word.removeprefix("/"))
    return name if name in COMMANDS else word


def _bare(name: str) -> Callable[[str], Command]:
    return lambda rest: Command(name)


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("ask", "<question>", "Ask the model anything. Any line that starts with no command word is a question too.",
                    "ask What is io.net?", _text("ask", "Write your question after ask.")),
        CommandSpec("summarize", "[max_words] <text>", f"Summarize text in at most max_words words (default {DEFAULT_SUMMARY_WORDS}), with its key points.",
                    "summarize 50 The meeting covered the budget, the hiring plan and the launch date.", _summarize,
                    details=f"max_words is a whole number from 1 to {MAX_SUMMARY_WORDS}."),
        CommandSpec("translate", "<language> <text>", "Translate text into a language.",
                    "translate French Good morning", _translate,
                    details='Quote a language of several words: `translate "Simplified Chinese" Good morning`. '
                            "The language goes to the model as written, so codes such as pt-BR work too."),
        CommandSpec("sentiment", "<text>", "Tell whether text is positive, neutral or negative.",
                    "sentiment I love the new release", _text("sentiment", "Give the text to rate.")),
        CommandSpec("classify", "<label,label,...> <text>", "Put text into one of two or more labels.",
                    "classify bug,feature,question The app crashes when I save", _classify,
                    details=f"Up to {MAX_LABELS} labels, separated by commas; quote them if they have spaces: "
                            '`classify "bug report,feature request" The app crashes`.'),
        CommandSpec("moderate", "<text>", "Score text for profanity, hate, harassment, self-harm and other risks.",
                    "moderate You are all wonderful", _text("moderate", "Give the text to score.")),
        CommandSpec("entities", "<text>", "List the people, organizations, places, dates and events in text.",
                    "entities Ada Lovelace met Charles Babbage in London in 1833", _text("entities", "Give the text to search.")),
        CommandSpec("reason", "<problem>", "Work through a problem step by step.",
                    "reason A train leaves at 3pm at 60 km/h. When has it gone 150 km?", _text("reason", "Describe the problem after reason.")),
        CommandSpec("vision", "<image-url> [question]", "Ask about an image. Attaching images to a message works too.",
                    "vision https://example.com/cat.png How many cats are there?", _vision,
                    details="The link must be http or https. In the terminal a file path works too; quote a path with spaces."),
        CommandSpec("agents", "", "List the AI agents the service offers.", "agents", _bare("agents"), takes_text=False),
        CommandSpec("models", "", "List the models with their daily quota and today's use.", "models", _bare("models"), takes_text=False),
        CommandSpec("usage", "", "Show your own use today and what is left.", "usage", _bare("usage"), takes_text=False),
        CommandSpec("help", "[command]", "Show this help, or one command's. `/help` and `?` are help too.", "help translate", _help,
                    takes_text=False),
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
        if spec.name == "help" and not split_word(rest)[1]:  # "help translate", "help nonsense": one word
            return spec.parse(rest)
        return Command("ask", text=line)  # "help me write a poem", "usage of semicolons?"
    return spec.parse(rest)


INFORMATIONAL = ("help", "agents", "models", "usage")  # answered at once, to the asker alone


def is_informational(text: str) -> bool:
    """Whether a line asks for help, agents, models or usage, or is malformed: answered at once, privately."""
    try:
        return parse_command(text).name in INFORMATIONAL
    except UsageError:
        return True


def help_text(topic: str = "") -> str:
    """The help, in the neutral markdown that adapters render: every command, one, or that there is no such one."""
    if topic in COMMANDS:
        spec = COMMANDS[topic]
        lines = [f"`{spec.usage}`", spec.description, spec.details, f"Example: `{spec.example}`"]
        return "\n".join(line for line in lines if line)
    if topic:
        names = ", ".join(f"`{name}`" for name in COMMANDS)
        return f"There is no command {shown(topic)}. The commands are {names}; `help <command>` explains one."
    lines = ["**Commands**"]
    lines += [f"• `{spec.usage}`: {spec.description}" for spec in COMMANDS.values()]
    lines.append("Images attached to a message are analysed by a vision model, with the message as the question.")
    lines.append("`help <command>` explains one command, with an example.")
    return "\n".join(lines)
