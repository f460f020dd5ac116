"""What the writer tells Gemma: the NewBie schema in words, wrapped in Gemma's chat template.

The grammar guarantees the structure; this text steers the content (which fields to use,
Danbooru tags with underscores, escaped parentheses).
"""

from __future__ import annotations

from ..text.tokenizers import Tokenizer
from ..xml_prompt.schema import CHARACTER_FIELDS, GENERAL_FIELDS
from .tokens import special_id

EXAMPLE = """<character_1>
<n>hatsune_miku</n>
<gender>1girl</gender>
<appearance>long_hair, twintails, aqua_hair, aqua_eyes</appearance>
<clothing>detached_sleeves, necktie, pleated_skirt</clothing>
<expression>smile, open_mouth</expression>
<action>holding_microphone, singing</action>
<position>center</position>
</character_1>

<general_tags>
<count>1girl, solo</count>
<style>anime_style</style>
<background>stage, concert, crowd</background>
<lighting>stage_lights</lighting>
<quality>masterpiece, best_quality</quality>
</general_tags>"""

INSTRUCTION = f"""You write image prompts for the NewBie anime image model in its XML format.
Describe every person in its own block <character_1>, <character_2>, ... in order. A block holds
<n> (the character's name in Danbooru form, e.g. rem_\\(re:zero\\), or empty for an original
character) and any of: {", ".join(f"<{f}>" for f in CHARACTER_FIELDS[1:])}.
Then one <general_tags> block with any of: {", ".join(f"<{f}>" for f in GENERAL_FIELDS)}.
Every field is a comma-separated list of Danbooru tags: lowercase, words joined by underscores,
parentheses escaped as \\( and \\). <gender> is like 1girl or 1boy; <count> is like 1girl, solo or
2girls, multiple_girls. Leave out fields you have nothing for. Write only the XML.

Example:
{EXAMPLE}

Write the prompt for this description:"""

COMPLETE_INSTRUCTION = "Continue and finish the prompt that the user started."


def chat_prompt_ids(tokenizer: Tokenizer, description: str, instruction: str = INSTRUCTION) -> list[int]:
    """``<bos><start_of_turn>user\\n{instruction}\\n\\n{description}<end_of_turn>\\n<start_of_turn>model\\n``.

    Gemma has no system role, so the instruction opens the user turn (as Gemma's own template does).
    The turn markers are single special tokens when the vocabulary has them, text otherwise.
    """

    def marker(piece: str) -> list[int]:
        i = special_id(tokenizer, piece)
        return [i] if i is not None else tokenizer.encode_plain(piece)

    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    ids += marker("<start_of_turn>") + tokenizer.encode_plain(f"user\n{instruction}\n\n{description.strip()}")
    ids += marker("<end_of_turn>") + tokenizer.encode_plain("\n")
    ids += marker("<start_of_turn>") + tokenizer.encode_plain("model\n")
    return ids
