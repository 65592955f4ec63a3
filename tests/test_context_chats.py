"""ContextChats: SQuAD-style questions as chats whose system turn holds passages as `--docs` gives them."""

from data_modules import ContextChats
from lightning_gpt.chat import ASSISTANT, END_OF_TURN
from lightning_gpt.model import IGNORE_INDEX
from lightning_gpt.retrieval import CONTEXT_HEADER
from tests.conftest import squad_folder, squad_rows


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
    x, y, *_ = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    assert (x == tok.token_id("<|system|>")).sum() == len(x)  # every conversation opens with its passages
    for inputs, targets in zip(x.tolist(), y.tolist(), strict=True):
        scored = [t for t in targets if t != IGNORE_INDEX]
        start = inputs.index(tok.token_id(ASSISTANT))
        # Targets are the inputs shifted by one: the answer's tokens after <|assistant|>, then <|end|>.
        assert scored[:-1] == inputs[start + 1 : start + len(scored)] and scored[-1] == tok.token_id(END_OF_TURN)
        assert tok.decode(scored[:-1]).startswith("answer") and tok.decode(scored[:-1]).endswith("]")
