"""The command grammar, the same on every platform: `/io <line>` in Slack, an @mention, a DM, the console.

A line whose first word is no command is a question. A command with missing or malformed arguments
raises `UsageError`, whose message is the command's usage line. `help` text is generated from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SUMMARY_WORDS = 1000
DEFAULT_SUMMARY_WORDS = 100
DEFAULT_VISION_QUESTION = "What is in this image?"


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


def split_word(text: str) -> tuple[str, str]:
    """The first word and the rest; the rest keeps its own spacing and line breaks."""
    parts = text.strip().split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1].strip() if len(parts) > 1 else ""


def _text(name: str) -> Callable[[str], Command | None]:
    return lambda rest: Command(name, text=rest) if rest else None


def _summarize(rest: str) -> Command | None:
    first, text = split_word(rest)
    if first.lstrip("+-").isdigit():
        words = int(first)
        if not 1 <= words <= MAX_SUMMARY_WORDS or not text:
            return None
        return Command("summarize", text=text, max_words=words)
    return Command("summarize", text=rest) if rest else None


def _translate(rest: str) -> Command | None:
    language, text = split_word(rest)
    return Command("translate", text=text, language=language) if text else None


def _classify(rest: str) -> Command | None:
    labels_word, text = split_word(rest)
    labels = tuple(dict.fromkeys(label.strip() for label in labels_word.split(",") if label.strip()))
    if len(labels) < 2 or not text:
        return None
    return Command("classify", text=text, labels=labels)


def _vision(rest: str) -> Command | None:
    image, question = split_word(rest)
    return Command("vision", image=image, text=question or DEFAULT_VISION_QUESTION) if image else None


def _help(rest: str) -> Command | None:
    return Command("help", topic=split_word(rest)[0].lower())


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
    first, rest = split_word(text)
    if not first:
        return Command("help")
    spec = COMMANDS.get(first.lower())
    if spec is None:
        return Command("ask", text=text.strip())
    if not spec.takes_text and rest:
        if spec.name == "help" and split_word(rest)[0].lower() in COMMANDS:
            return Command("help", topic=split_word(rest)[0].lower())
        return Command("ask", text=text.strip())  # "help me write a poem", "usage of semicolons?"
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
