"""XML prompt nodes: a validated free-form prompt, chainable character builders, general tags, assembler.

Every output is a plain STRING, so it feeds NewBie Text Encode and stock CLIPTextEncode alike.
"""

from __future__ import annotations

from ..newbie_core.xml_prompt import XMLPromptError, build, parse
from ..newbie_core.xml_prompt.prompt import Character, StructuredPrompt
from ._api import io, schema

# The builder nodes' widgets, written out literally: saved graphs store widget values by position, so this order is
# public (pinned by tests/node_interface.json). A field the XML schema gains later is appended here as an *optional*
# input; it never shifts these.
CHARACTER_WIDGETS = (
    "n",
    "gender",
    "appearance",
    "clothing",
    "body_type",
    "expression",
    "action",
    "interaction",
    "position",
)
GENERAL_WIDGETS = (
    "count",
    "artists",
    "style",
    "background",
    "environment",
    "perspective",
    "atmosphere",
    "lighting",
    "quality",
    "resolution",
    "objects",
    "other",
)

FIELD_TIPS = {
    "n": "Character name in <n>, e.g. rem_\\(re:zero\\) or $character_1$. Kept even when empty (official convention).",
    "gender": "e.g. 1girl, 1boy",
    "appearance": "Hair, eyes, body features: comma-separated Danbooru tags.",
    "clothing": "Outfit tags; left out when empty.",
    "body_type": "e.g. slender, petite",
    "expression": "e.g. smile, blush",
    "action": "e.g. standing, waving",
    "interaction": "What this character does with others or the viewer.",
    "position": "Where in the frame, e.g. center_left, foreground",
    "count": "e.g. 2girls, multiple_girls",
    "artists": "Artist tags, e.g. artist:name",
    "style": "e.g. anime_style, digital_art",
    "background": "e.g. white_background",
    "environment": "Setting tags, e.g. classroom, night",
    "perspective": "Camera tags, e.g. from_above, close-up",
    "atmosphere": "Mood tags, e.g. cheerful",
    "lighting": "e.g. backlighting, rim_light",
    "quality": "e.g. masterpiece, best_quality",
    "resolution": "e.g. highres, absurdres",
    "objects": "Props in the scene",
    "other": "Anything else",
}


def check_prompt(text: str) -> bool | str:
    """True, or a message with line and column that ComfyUI shows before the run starts."""
    try:
        parse(text)
    except XMLPromptError as exc:
        return f"NewBie XML prompt: {exc}"
    return True


class NewBieXMLPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieXMLPrompt",
            display_name="NewBie XML Prompt",
            category="NewBie/prompt",
            search_aliases=["newbie", "xml", "prompt", "character"],
            description="A prompt in NewBie's XML format (tags or plain text also pass). Malformed XML is reported with "
            "line and column before the workflow runs.",
            inputs=[
                io.String.Input(
                    "text",
                    multiline=True,
                    default="",
                    tooltip="NewBie XML (<character_1>...</character_1> <general_tags>...</general_tags>), "
                    "Danbooru tags or natural language.",
                ),
            ],
            outputs=[io.String.Output(tooltip="The prompt text, validated and unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, text: str) -> bool | str:
        return check_prompt(text) if isinstance(text, str) else True

    @classmethod
    def execute(cls, text: str) -> io.NodeOutput:
        verdict = check_prompt(text)
        if verdict is not True:
            raise ValueError(verdict)
        return io.NodeOutput(text)


def _parse_blocks(text: str | None, what: str) -> StructuredPrompt:
    if not text or not text.strip():
        return StructuredPrompt()
    try:
        prompt = parse(text)
    except XMLPromptError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not prompt.is_xml:
        raise ValueError(f"{what}: expected XML character blocks, got plain text")
    return prompt


class NewBieCharacter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        fields = [
            io.String.Input(
                f,
                default="1girl" if f == "gender" else "",
                multiline=f not in ("n", "gender", "position"),
                tooltip=FIELD_TIPS[f],
            )
            for f in CHARACTER_WIDGETS
        ]
        return schema(
            node_id="NewBieCharacter",
            display_name="NewBie Character",
            category="NewBie/prompt",
            search_aliases=["newbie", "character", "xml builder"],
            description="Adds one <character_N> block. Chain as many as you like: each node numbers its block after the "
            "characters it receives.",
            inputs=[
                io.String.Input(
                    "previous",
                    force_input=True,
                    optional=True,
                    tooltip="Character blocks from another NewBie Character node (optional).",
                ),
                *fields,
                io.Boolean.Input(
                    "normalize_tags",
                    default=True,
                    tooltip="Rewrite tags in Danbooru form: spaces to underscores, parentheses escaped.",
                ),
            ],
            outputs=[io.String.Output(display_name="characters", tooltip="XML of all characters so far.")],
        )

    @classmethod
    def execute(cls, previous: str | None = None, normalize_tags: bool = True, **fields) -> io.NodeOutput:
        prompt = _parse_blocks(previous, "previous characters")
        index = max((c.index for c in prompt.characters), default=0) + 1
        values = {k: v for k, v in fields.items() if k in CHARACTER_WIDGETS}
        new = build(StructuredPrompt(characters=[Character(index, values)]), normalize=normalize_tags)
        text = (build(prompt) + "\n\n" + new) if prompt.characters else new
        return io.NodeOutput(text)


class NewBieGeneralTags(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieGeneralTags",
            display_name="NewBie General Tags",
            category="NewBie/prompt",
            search_aliases=["newbie", "general tags", "xml builder"],
            description="The <general_tags> block: scene-wide tags. Empty fields are left out.",
            inputs=[
                *[io.String.Input(f, default="", multiline=True, tooltip=FIELD_TIPS[f]) for f in GENERAL_WIDGETS],
                io.Boolean.Input(
                    "normalize_tags",
                    default=True,
                    tooltip="Rewrite tags in Danbooru form: spaces to underscores, parentheses escaped.",
                ),
            ],
            outputs=[io.String.Output(display_name="general_tags", tooltip="XML of the general_tags block.")],
        )

    @classmethod
    def execute(cls, normalize_tags: bool = True, **fields) -> io.NodeOutput:
        values = {k: v for k, v in fields.items() if k in GENERAL_WIDGETS}
        return io.NodeOutput(build(general_tags=values, normalize=normalize_tags))


class NewBieXMLAssemble(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="NewBieXMLAssemble",
            display_name="NewBie XML Assemble",
            category="NewBie/prompt",
            search_aliases=["newbie", "xml", "assemble"],
            description="Joins caption, characters and general tags into one validated NewBie XML prompt.",
            inputs=[
                io.String.Input("characters", force_input=True, optional=True, tooltip="From NewBie Character nodes."),
                io.String.Input("general_tags", force_input=True, optional=True, tooltip="From NewBie General Tags."),
                io.String.Input(
                    "caption",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip="Optional natural-language scene description (<caption>).",
                ),
            ],
            outputs=[io.String.Output(display_name="prompt", tooltip="The complete XML prompt.")],
        )

    @classmethod
    def execute(
        cls, characters: str | None = None, general_tags: str | None = None, caption: str = ""
    ) -> io.NodeOutput:
        chars = _parse_blocks(characters, "characters")
        general = _parse_blocks(general_tags, "general_tags")
        prompt = StructuredPrompt(
            characters=[Character(c.index, dict(c.fields)) for c in chars.characters],
            general_tags=dict(general.general_tags),
            caption=caption or None,
        )
        text = build(prompt)
        verdict = check_prompt(text)
        if verdict is not True:
            raise ValueError(verdict)
        return io.NodeOutput(text)


NODES = [NewBieXMLPrompt, NewBieCharacter, NewBieGeneralTags, NewBieXMLAssemble]
