"""ContextChats: SQuAD-style questions as chats whose system turn holds passages as `--docs` gives them."""

import json
import re

import numpy as np

from data_modules import ContextChats
from data_modules.token_cache import meta_path
from data_modules.windows import LazyArray
from lightning_gpt.chat import ASSISTANT, END_OF_TURN, USER
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.passages import CONTEXT_HEADER
from tests.conftest import squad_folder, squad_rows, write_hub_folder


def test_each_question_gets_its_passage_among_distinct_distractors_and_the_answer_cites_it():
    rows = squad_rows(6)
    batch = {key: [row[key] for row in rows] for key in rows[0]}
    conversations = ContextChats(distractors=2).to_messages(batch, list(range(len(rows))))["messages"]
    places = set()
    for row, (system, user, assistant) in zip(rows, conversations, strict=True):
        assert system["role"] == "system" and system["content"].startswith(CONTEXT_HEADER)
        passages = system["content"].split("\n\n")[1:]
        assert len(passages) == 3 and len({p.split(") ", 1)[1] for p in passages}) == 3  # distinct passages
        gold = [i for i, p in enumerate(passages, start=1) if p.startswith(f"[{i}] ({row['title']}) {row['context']}")]
        assert len(gold) == 1  # the row's own passage, once
        assert user == {"role": "user", "content": row["question"]}
        assert assistant == {"role": "assistant", "content": f"{row['answers']['text'][0]} [{gold[0]}]"}
        places.add(gold[0])
    assert len(places) > 1  # not always first: the model has to find it


def test_the_loss_is_on_the_cited_answers_only(tmp_path):
    dm = ContextChats(
        path=str(squad_folder(tmp_path / "squad")), block_size=512, batch_size=4, num_workers=0, cache_dir=tmp_path
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x, y = batch.inputs, batch.targets
    tok = dm.tokenizer
    assert (x == tok.token_id("<|system|>")).sum() == len(x)  # every conversation opens with its passages
    for inputs, targets in zip(x.tolist(), y.tolist(), strict=True):
        scored = [t for t in targets if t != IGNORE_INDEX]
        start = inputs.index(tok.token_id(ASSISTANT))
        # Targets are the inputs shifted by one: the answer's tokens after <|assistant|>, then <|end|>.
        assert scored[:-1] == inputs[start + 1 : start + len(scored)] and scored[-1] == tok.token_id(END_OF_TURN)
        assert tok.decode(scored[:-1]).startswith("answer") and tok.decode(scored[:-1]).endswith("]")


def cached_chats(dm: ContextChats, role: str) -> list[str]:
    """The text of each chat in a role's cache."""
    base, meta = dm._cache(role)
    tokens = np.asarray(LazyArray(base, meta, "tokens").values)
    lengths = np.asarray(LazyArray(base, meta, "lengths").values)
    starts = np.cumsum(lengths) - lengths
    return [dm.tokenizer.decode(tokens[s : s + n].tolist()) for s, n in zip(starts, lengths, strict=True)]


def passages_of(chat: str) -> tuple[set[int], int]:
    """(the articles whose passages a chat's system turn holds, the article its question asks about): each fixture
    passage names its article in its planted answers ("the key 0 is answer7x0")."""
    system, question = chat.split(USER, 1)
    return {int(a) for a in re.findall(r"answer(\d+)x\d", system)}, int(re.search(r"of article (\d+)\?", question)[1])


def test_validation_passages_are_held_out_whole_never_seen_in_training_even_as_distractors(tmp_path):
    # 200 passages, 5 questions each, as SQuAD asks about five per passage.
    rows = squad_rows(200, seed=3, questions=5)
    path = write_hub_folder(tmp_path / "squad", {"train": rows, "validation": rows[:10]}, config="plain_text")
    dm = ContextChats(
        path=str(path), val_fraction=0.1, block_size=1024, batch_size=4, num_workers=0, cache_dir=tmp_path
    )
    dm.prepare_data()
    dm.setup("fit")
    val = [passages_of(chat) for chat in cached_chats(dm, "val")]
    train = [passages_of(chat) for chat in cached_chats(dm, "train")]
    assert len(val) + len(train) == 1000  # every question once, on one side
    held = {gold for _, gold in val}
    assert all(gold in shown and len(shown) == 3 for shown, gold in train)  # its passage and 2 distractors
    seen_in_training = set().union(*(shown for shown, _ in train))
    assert not held & seen_in_training  # no validation passage, as the answer's or a distractor
    assert len(val) == 5 * len(held)  # a held-out passage takes all its questions with it
    assert 10 <= len(held) <= 30  # about val_fraction of the 200 passages (20 +- 4)
    assert all(shown <= held for shown, _ in val)  # validation chats' distractors are validation passages too
    for role, count in (("val", len(val)), ("train", len(train))):
        stats = json.loads(meta_path(dm.cache_base("train", role)).read_text())["stats"]
        assert stats["rows"] == 1000 and stats["holdout"]["excluded_rows"] == 1000 - count
        assert stats["samples"] == count and stats["skipped"] == 0
        assert "held_out_by=context" in dm.cache_variant(role)  # not the caches held out by question


def test_a_split_too_small_for_val_fraction_holds_out_one_whole_passage(tmp_path):
    path = write_hub_folder(tmp_path / "small", {"train": squad_rows(6, questions=4)}, config="plain_text")
    dm = ContextChats(path=str(path), val_fraction=1e-9, block_size=1024, num_workers=0, cache_dir=tmp_path)
    dm.prepare_data()
    val = [passages_of(chat) for chat in cached_chats(dm, "val")]
    train = [passages_of(chat) for chat in cached_chats(dm, "train")]
    held = {gold for _, gold in val}
    assert len(held) == 1 and len(val) == 4 and len(train) == 20  # all 4 questions of one passage
    assert not held & set().union(*(shown for shown, _ in train))
