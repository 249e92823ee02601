"""The command grammar, the same on every platform: `/io <line>` in Slack, an @mention, a DM, the console.

A line whose first word is no command is a question. A command with missing or malformed arguments
raises `UsageError`, whose message says what was wrong, with the usage line and an example. A first
argument of several words is quoted (`translate "Simplified Chinese" ...`).

Each command is described once, by a `CommandSpec` in `COMMANDS`: its usage and help, its grammar,
the typed options its slash command takes, and how it is answered (an agent task with its arguments
and the rendering of its result, a chat, or one of the bot's own views). The service dispatches,
`help` explains and Discord offers slash commands from these records; none of this calls the API.

Lines come from people, pasted from anywhere, so the grammar takes any string: words are separated by
any Unicode space (no-break and ideographic spaces too) or zero-width space, command words are
compared in their plain form (`help` in fullwidth letters is `help`), and only decimal digits make a
number, whose size is checked before it is converted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import Outcome, UserError
from .render import render_result
from .workflows import WorkflowResult

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
MAX_INSTRUCTIONS_CHARS = 4000  # a channel's standing instructions go with every question asked there
CLEAR = "clear"  # `instructions clear`
DEFAULT = "default"  # `model default`
MODERATION_THRESHOLD = 0.5
# The agents answer in a few hundred tokens at most; a workflow answer carries no usage, so this makes
# the answer's part of its (high) estimate.
WORKFLOW_ANSWER_TOKENS = 400


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


class UsageError(UserError):
    """A command's arguments are missing or malformed: `str()` says what was wrong, the usage line and an example."""

    outcome = Outcome.USAGE

    def __init__(self, name: str, problem: str) -> None:
        self.spec = COMMANDS[name]
        self.problem = problem
        super().__init__(f"{problem}\nUsage: {self.spec.usage}\nExample: {self.spec.example}")


class NoText(UsageError):
    """A command's text is missing; `command` is the rest of it, as parsed (files attached to the message can be its text)."""

    def __init__(self, command: Command, problem: str) -> None:
        super().__init__(command.name, problem)
        self.command = command


class OptionKind(StrEnum):
    """What an option holds, and so how a slash command offers it and how its value is read."""

    TEXT = "text"
    NUMBER = "number"  # a whole number from `low` to `high`
    LANGUAGE = "language"  # read by `parse_language`
    LABELS = "labels"  # comma-separated, read by `parse_labels`
    URL = "url"  # an image's address, read by `parse_image`
    ATTACHMENT = "attachment"  # a file attached to a slash command: no word of the grammar; its value is whether one was
    COMMAND = "command"  # a command's name, offered as a choice of every command
    MODEL = "model"  # a chat model's name, offered as the person types from the models they may pick


@dataclass(frozen=True)
class Option:
    """One typed argument of a command, in the order the grammar reads them."""

    name: str
    description: str
    kind: OptionKind = OptionKind.TEXT
    field: str = "text"  # the `Command` attribute its value sets
    required: bool = True
    default: str | int | None = None
    low: int | None = None  # a NUMBER's bounds
    high: int | None = None
    missing: str = ""  # the usage error's problem when it is left out; "Give <description>." when empty

    @property
    def missing_problem(self) -> str:
        return self.missing or f"Give {self.description[0].lower()}{self.description[1:]}."


class Call(StrEnum):
    """How the service answers a command that is no agent task."""

    HELP = "help"  # the help text, without the API
    CHAT = "chat"  # a chat completion
    VISION = "vision"  # a chat completion with images
    AGENTS = "agents"  # the API's list of agents
    MODELS = "models"  # the quota table with today's use
    USAGE = "usage"  # the person's use today
    MODEL = "model"  # show or pick the person's chat model, without the API
    INSTRUCTIONS = "instructions"  # show or change the channel's standing instructions, without the API


def _no_arguments(command: Command) -> dict[str, Any]:
    return {}


def _short_answer(command: Command) -> int:
    return WORKFLOW_ANSWER_TOKENS


@dataclass(frozen=True)
class AgentTask:
    """An agent command's API call (`/workflows/run`) and how its result reads.

    `task` is the API's task type (see workflows.TASKS), `arguments` its arguments built from the
    command, `answer_tokens` the answer's room in the estimate charged before the call.
    """

    task: str
    arguments: Callable[[Command], dict[str, Any]] = _no_arguments
    answer_tokens: Callable[[Command], int] = _short_answer
    render: Callable[[WorkflowResult], str] = render_result


@dataclass(frozen=True)
class CommandSpec:
    """Everything about one command: adding a command is adding one of these to `COMMANDS`."""

    name: str
    arguments: str
    description: str
    example: str
    call: Call | AgentTask
    options: tuple[Option, ...] = ()
    grammar: Callable[[str], Command] | None = field(default=None, repr=False)  # None: the options in order
    build: Callable[[Mapping[str, Any]], Command] | None = field(default=None, repr=False)  # None: each option sets its field
    words: int | None = None  # the most words its arguments take; a line with more is a question (None: no limit)
    private: bool = False  # answered at once, to the asker alone (help and the bot's own views)
    details: str = ""  # more for `help <command>`

    @property
    def usage(self) -> str:
        return f"{self.name} {self.arguments}".strip()

    def parse(self, rest: str) -> Command:
        """The command the words after its name make; UsageError when they are missing or malformed."""
        return self.grammar(rest) if self.grammar else _parse_options(self, rest)

    def command(self, values: Mapping[str, Any]) -> Command:
        """The command its options' values make, a missing one taking its default; UsageError for a malformed one.

        This is how a slash command's options become a `Command`.
        """
        filled = {option.name: values.get(option.name, option.default) for option in self.options}
        if self.build is not None:
            return self.build(filled)
        fields = {
            option.field: read_option(self.name, option, value)
            for option in self.options
            if (value := filled[option.name]) is not None and option.kind is not OptionKind.ATTACHMENT
        }  # attached files travel as the request's images
        return Command(self.name, **fields)


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


def parse_language(language: str, command: str = "translate") -> str:
    """A language as sent to the API, its case kept (`pt-BR`); UsageError unless it looks like one."""
    language = _argument(language[: MAX_LANGUAGE_CHARS * 4])  # cut first: longer is refused anyway
    if not language:
        raise UsageError(command, "Say which language to translate into, then the text.")
    if len(language) > MAX_LANGUAGE_CHARS or not any(ch.isalpha() for ch in language):
        raise UsageError(command, f"{shown(language)} is not a language name.")
    return language


def parse_labels(labels: str, command: str = "classify") -> tuple[str, ...]:
    """Comma-separated labels, each once whatever its case; UsageError unless there are 2 to MAX_LABELS short ones."""
    if len(labels) > MAX_LABELS * (MAX_LABEL_CHARS + 1) * 2:  # refused before the work of reading them
        raise UsageError(command, f"Give at most {MAX_LABELS} labels of at most {MAX_LABEL_CHARS} characters each.")
    found: dict[str, str] = {}
    for label in _argument(labels).split(","):
        label = trim(label)
        if label:
            found.setdefault(label.casefold(), label)
    if len(found) < 2:
        raise UsageError(command, "Give two or more labels separated by commas, no spaces between (or quote them).")
    if len(found) > MAX_LABELS:
        raise UsageError(command, f"Give at most {MAX_LABELS} labels.")
    if any(len(label) > MAX_LABEL_CHARS for label in found.values()):
        raise UsageError(command, f"A label is at most {MAX_LABEL_CHARS} characters long.")
    return tuple(found.values())


def parse_image(image: str, command: str = "vision") -> str:
    """An image's address: an http(s) link or, in the console, a file path; UsageError for any other kind of link."""
    if not image:
        raise UsageError(command, "Give a link to the image, then your question (or attach the image to a message).")
    scheme = URL_SCHEME.match(image)
    if scheme and scheme[1].lower() not in ("http", "https"):
        raise UsageError(command, f"{shown(scheme[1] + ':')} links are not supported: give an http or https link to the image.")
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


def read_option(command: str, option: Option, value: Any) -> Any:
    """An option's value as the `Command` holds it: checked and normalised by its kind; UsageError when malformed."""
    match option.kind:
        case OptionKind.LANGUAGE:
            return parse_language(value, command)
        case OptionKind.LABELS:
            return parse_labels(value, command)
        case OptionKind.URL:
            return parse_image(value, command)
        case OptionKind.NUMBER:
            number = value if isinstance(value, int) else word_count(value)
            low, high = option.low or 1, option.high or 10**9 - 1
            if number is None or not low <= number <= high:
                raise UsageError(
                    command, f"`{option.name}` must be a whole number from {low} to {high}, not {shown(str(value))}."
                )
            return number
    return value


def _parse_options(spec: CommandSpec, rest: str) -> Command:
    """The grammar a command's options make: each in order, one word (or a quoted phrase), the last one the rest."""
    options = [option for option in spec.options if option.kind is not OptionKind.ATTACHMENT]
    values: dict[str, str] = {}
    for option in options[:-1]:
        values[option.name], rest = first_argument(spec.name, rest)
    if options:
        values[options[-1].name] = rest
    for option in options:
        if option.required and not values[option.name]:
            if option.field == "text" and option is options[-1]:
                raise NoText(spec.command({name: value for name, value in values.items() if value}), option.missing_problem)
            raise UsageError(spec.name, option.missing_problem)
    return spec.command({name: value for name, value in values.items() if value})


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
            raise NoText(Command("summarize", max_words=words), "Give the text to summarize after the word count.")
        return Command("summarize", text=text, max_words=words)
    if not rest:
        raise NoText(Command("summarize"), "Give the text to summarize.")
    return Command("summarize", text=rest)


def _translate(rest: str) -> Command:
    language, text = first_argument("translate", rest)
    language = parse_language(language)
    if not text:
        raise NoText(Command("translate", language=language), f"Give the text to translate into {language} after the language.")
    return Command("translate", text=text, language=language)


def _classify(rest: str) -> Command:
    labels, text = first_argument("classify", rest)
    if not labels:
        raise UsageError("classify", "Give two or more labels separated by commas, then the text.")
    found = parse_labels(labels)
    if not text:
        raise NoText(Command("classify", labels=found), "Give the text to classify after the labels.")
    return Command("classify", text=text, labels=found)


def _vision(rest: str) -> Command:
    image, question = first_argument("vision", rest)
    return Command("vision", image=parse_image(image), text=question or DEFAULT_VISION_QUESTION)


def _help(rest: str) -> Command:
    return Command("help", topic=_topic(split_word(rest)[0]))


def _model(rest: str) -> Command:
    return Command("model", text=split_word(rest)[0])


def _instructions(rest: str) -> Command:
    if len(rest) > MAX_INSTRUCTIONS_CHARS:
        raise UsageError(
            "instructions", f"Instructions are at most {MAX_INSTRUCTIONS_CHARS:,} characters; these have {len(rest):,}."
        )
    return Command("instructions", text=rest)


def _topic(word: str) -> str:
    """The command `help <word>` asks about: its name when it is one, else the word as written."""
    name = command_name(word.removeprefix("/"))
    return name if name in COMMANDS else word


def _vision_options(values: Mapping[str, Any]) -> Command:
    """An attached image is asked about as the request's images (a question); a link is the grammar's `vision <url>`."""
    if values["image"] and not values["url"]:
        return Command("ask", text=values["question"])
    return Command("vision", image=parse_image(values["url"] or ""), text=values["question"])  # neither: the usage error


def _summary_arguments(command: Command) -> dict[str, Any]:
    return {"max_words": command.max_words}


def _summary_tokens(command: Command) -> int:
    return max(WORKFLOW_ANSWER_TOKENS, 2 * command.max_words)


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec(
            "ask",
            "<question>",
            "Ask the model anything. Any line that starts with no command word is a question too.",
            "ask What is io.net?",
            Call.CHAT,
            options=(Option("question", "What to ask the model", missing="Write your question after ask."),),
        ),
        CommandSpec(
            "summarize",
            "[max_words] <text>",
            f"Summarize text in at most max_words words (default {DEFAULT_SUMMARY_WORDS}), with its key points.",
            "summarize 50 The meeting covered the budget, the hiring plan and the launch date.",
            AgentTask("summarize_text", _summary_arguments, _summary_tokens),
            options=(
                Option("text", "The text to summarize"),
                Option(
                    "max_words",
                    f"At most this many words (default {DEFAULT_SUMMARY_WORDS})",
                    OptionKind.NUMBER,
                    "max_words",
                    required=False,
                    default=DEFAULT_SUMMARY_WORDS,
                    low=1,
                    high=MAX_SUMMARY_WORDS,
                ),
            ),
            grammar=_summarize,
            details=f"max_words is a whole number from 1 to {MAX_SUMMARY_WORDS}.",
        ),
        CommandSpec(
            "translate",
            "<language> <text>",
            "Translate text into a language.",
            "translate French Good morning",
            AgentTask("translate_text", lambda command: {"target_language": command.language}),
            options=(
                Option("language", "The language to translate into", OptionKind.LANGUAGE, "language"),
                Option("text", "The text to translate"),
            ),
            grammar=_translate,
            details='Quote a language of several words: `translate "Simplified Chinese" Good morning`. '
            "The language goes to the model as written, so codes such as pt-BR work too.",
        ),
        CommandSpec(
            "sentiment",
            "<text>",
            "Tell whether text is positive, neutral or negative.",
            "sentiment I love the new release",
            AgentTask("sentiment"),
            options=(Option("text", "The text to rate"),),
        ),
        CommandSpec(
            "classify",
            "<label,label,...> <text>",
            "Put text into one of two or more labels.",
            "classify bug,feature,question The app crashes when I save",
            AgentTask("classify", lambda command: {"classify_by": list(command.labels)}),
            options=(
                Option("labels", "Two or more labels, separated by commas", OptionKind.LABELS, "labels"),
                Option("text", "The text to classify"),
            ),
            grammar=_classify,
            details=f"Up to {MAX_LABELS} labels, separated by commas; quote them if they have spaces: "
            '`classify "bug report,feature request" The app crashes`.',
        ),
        CommandSpec(
            "moderate",
            "<text>",
            "Score text for profanity, hate, harassment, self-harm and other risks.",
            "moderate You are all wonderful",
            AgentTask("moderation", lambda command: {"threshold": MODERATION_THRESHOLD}),
            options=(Option("text", "The text to score"),),
        ),
        CommandSpec(
            "entities",
            "<text>",
            "List the people, organizations, places, dates and events in text.",
            "entities Ada Lovelace met Charles Babbage in London in 1833",
            AgentTask("extract_categorized_entities"),
            options=(Option("text", "The text to search"),),
        ),
        CommandSpec(
            "reason",
            "<problem>",
            "Work through a problem step by step.",
            "reason A train leaves at 3pm at 60 km/h. When has it gone 150 km?",
            AgentTask("solve_with_reasoning"),
            options=(Option("problem", "The problem to work through", missing="Describe the problem after reason."),),
        ),
        CommandSpec(
            "vision",
            "<image-url> [question]",
            "Ask about an image. Attaching images to a message works too.",
            "vision https://example.com/cat.png How many cats are there?",
            Call.VISION,
            options=(
                Option("image", "An image to ask about", OptionKind.ATTACHMENT, required=False),
                Option("url", "Or a link to one", OptionKind.URL, "image", required=False),
                Option("question", "What to ask about it", required=False, default=DEFAULT_VISION_QUESTION),
            ),
            grammar=_vision,
            build=_vision_options,
            details="The link must be http or https. In the terminal a file path works too; quote a path with spaces.",
        ),
        CommandSpec("agents", "", "List the AI agents the service offers.", "agents", Call.AGENTS, words=0, private=True),
        CommandSpec(
            "models",
            "",
            "List the models with their daily quota and today's use.",
            "models",
            Call.MODELS,
            words=0,
            private=True,
        ),
        CommandSpec("usage", "", "Show your own use today and what is left.", "usage", Call.USAGE, words=0, private=True),
        CommandSpec(
            "model",
            "[name|default]",
            "Show your chat model and the choices, or pick the model that answers your questions.",
            "model Qwen3-235B-A22B-FP8",
            Call.MODEL,
            options=(Option("name", "The model to pick, or default", OptionKind.MODEL, required=False),),
            grammar=_model,
            words=1,
            private=True,
            details=f"`model {DEFAULT}` goes back to the default model. Your choice is kept until you change it; "
            "when its daily quota is spent, another model answers. Agents and images keep their own models.",
        ),
        CommandSpec(
            "instructions",
            f"[text|{CLEAR}]",
            "Show this channel's standing instructions for the model; admins set or clear them.",
            "instructions Answer in French, in three sentences at most.",
            Call.INSTRUCTIONS,
            options=(Option("text", f"The new instructions, or {CLEAR}", required=False),),
            grammar=_instructions,
            build=lambda values: _instructions(values["text"] or ""),
            details="The instructions go with every question asked in the channel (mentions, DMs, thread answers), "
            f"as a system prompt. `instructions {CLEAR}` removes them. Only iobot's admins may change them.",
        ),
        CommandSpec(
            "help",
            "[command]",
            "Show this help, or one command's. `/help` and `?` are help too.",
            "help translate",
            Call.HELP,
            options=(Option("command", "A command to explain", OptionKind.COMMAND, "topic", required=False),),
            grammar=_help,
            words=1,
            private=True,
        ),
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
    if spec.words is not None and rest and len(SEPARATOR.split(rest, maxsplit=spec.words)) > spec.words:
        return Command("ask", text=line)  # "help me write a poem", "usage of semicolons?", "model trains are fun"
    return spec.parse(rest)


INFORMATIONAL = tuple(spec.name for spec in COMMANDS.values() if spec.private)  # answered at once, to the asker alone


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
    lines.append("Text files and PDFs attached to a message are what its command works on: `summarize` with a PDF summarizes it.")
    lines.append("`help <command>` explains one command, with an example.")
    return "\n".join(lines)
