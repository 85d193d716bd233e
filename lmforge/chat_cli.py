"""`lmforge chat CHECKPOINT`: talk to a model in the terminal.

Streams tokens as they are generated, keeps a multi-turn history trimmed to the context window
(oldest turns go first; the system prompt stays), and understands /reset, /system TEXT,
/help and /quit. `-p "prompt"` answers once and exits. Tool calls (the calculator) run inside
the engine and their outputs are shown in brackets. Ctrl-C stops a reply (the part shown stays in
the conversation); Ctrl-C or Ctrl-D at the prompt quits.
"""

from __future__ import annotations

import sys

from lmforge.errors import LmforgeError

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /help, /quit"


class ChatSession:
    def __init__(self, model, tok, *, temperature: float = 0.7, top_k: int = 50, top_p: float = 0.95,
                 max_new_tokens: int = 256, system: str = "", seed: int = 0):
        from lmforge.engine import Engine, SamplingParams
        from lmforge.tokenizer import END_OF_TURN
        from lmforge.tools import TOOLS

        self.model, self.tok = model, tok
        self.engine = Engine(model, tok, tools=TOOLS)
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                     top_p=top_p, stop_ids=(tok.special[END_OF_TURN], tok.eos_id), seed=seed)
        self.system = system.strip()  # a blank system prompt is no system prompt
        self.history: list[dict] = []
        self.turn = 0

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def prompt_ids(self) -> list[int]:
        """The conversation rendered for generation, dropping the oldest turns until it fits."""
        from lmforge.chat import render_prompt

        ctx = self.model.cfg.max_seq_len
        # keep at least half the window for the conversation, however long the answers may be
        budget = ctx - min(self.params.max_new_tokens, ctx // 2)
        while True:
            ids = render_prompt(self.messages(), self.tok)
            if len(ids) <= budget or len(self.history) <= 1:
                # one message longer than the window: keep BOS and the most recent tokens
                return ids if len(ids) <= budget else ids[:1] + ids[len(ids) - budget + 1:]
            # drop the oldest user turn and everything up to the next user turn
            nxt = next((i for i, m in enumerate(self.history[1:], 1) if m["role"] == "user"), len(self.history))
            self.history = self.history[nxt:]

    def reply(self, text: str, out=None) -> str:
        """Add a user turn, stream the answer to `out`, keep it in the history, return its text.

        Ctrl-C while streaming keeps what was shown, as a reply cut off by --max-new-tokens is kept
        (the history then matches the screen), and re-raises for the caller to resume or stop.
        """
        from lmforge.tokenizer import END_OF_TURN

        out = out or sys.stdout  # looked up per call: a default bound at import misses redirection
        self.history.append({"role": "user", "content": text})
        generated: list[int] = []
        shown = ""
        try:
            prompt = self.prompt_ids()
            self.params.seed += 1  # a fresh sample each turn, still reproducible from --seed
            for tid in self.engine.stream(prompt, self.params):
                if tid in (self.tok.special[END_OF_TURN], self.tok.eos_id):
                    break
                generated.append(tid)
                text_now = self._visible(generated)
                if text_now.startswith(shown):  # print only the new part (a multi-byte character may be partial)
                    out.write(text_now[len(shown):])
                    out.flush()
                    shown = text_now
        finally:  # also on Ctrl-C or an error: the history stays renderable either way
            out.write(self._visible(generated)[len(shown):] + "\n")
            self._keep(generated)
        return self.tok.decode(generated, skip_special=True).strip()

    def _keep(self, generated: list[int]) -> None:
        """Store the generated turn as the template's messages, so the next render gives back the
        very tokens the model produced: its tool calls and the forced outputs stay structured."""
        from lmforge.chat import parse_turn

        turn = self._renderable(parse_turn(generated, self.tok))
        if turn:
            self.history.extend(turn)
        else:  # nothing renderable (an empty reply): forget the question too, or the next
            self.history.pop()  # render would hold a user turn with no answer

    def _renderable(self, turn: list[dict]) -> list[dict]:
        """The longest start of `turn` the template can render with a user turn after it.

        The template has no empty assistant text (an instant end of turn), no call without its
        output and no turn ending right after a tool output; such a reply (empty, cut off by
        Ctrl-C or max tokens inside a call, or a malformed call name) loses its tail, so that
        history never fails validation on the next turn.
        """
        from lmforge.chat import validate

        while turn:
            try:
                validate([*self.messages(), *turn, {"role": "user", "content": "next"}], "history")
                return turn
            except LmforgeError:
                last = turn.pop()
                if last.get("tool_calls") and last["content"].strip():  # keep the text before the call
                    turn.append({"role": "assistant", "content": last["content"]})
        return turn

    def _visible(self, ids: list[int]) -> str:
        """Decoded text with tool segments shown as [tool call ...] / [= result]."""
        from lmforge.tokenizer import END_TOOL_CALL, END_TOOL_OUTPUT, TOOL_CALL, TOOL_OUTPUT

        marks = {self.tok.special[TOOL_CALL]: " [tool call: ", self.tok.special[END_TOOL_CALL]: "]",
                 self.tok.special[TOOL_OUTPUT]: " [= ", self.tok.special[END_TOOL_OUTPUT]: "] "}
        text, run = "", []
        for t in ids:
            if t in marks:
                text += self.tok.decode(run) + marks[t]
                run = []
            else:
                run.append(t)
        return text + self.tok.decode(run, skip_special=True)


def check_sampling_flags(args) -> None:
    """The sampling flags, checked before a model is loaded: a one-line error naming the flag."""
    from lmforge.errors import MAX_NEW_TOKENS, TEMPERATURE, check_flags

    check_flags(("--temperature", args.temperature, *TEMPERATURE),
                ("--top-k", args.top_k, lambda v: v >= 0, "an integer >= 0 (0: off)"),
                ("--top-p", args.top_p, lambda v: 0 < v <= 1, "a number > 0 and <= 1 (1: off)"),
                ("--max-new-tokens", args.max_new_tokens, *MAX_NEW_TOKENS))


def run_chat(args) -> int:
    from lmforge.model.io import load_checkpoint
    from lmforge.train.distributed import DistInfo, resolve_device

    check_sampling_flags(args)
    if args.prompt is not None and not args.prompt.strip():
        raise LmforgeError("-p: the prompt is empty")
    device = resolve_device(args.device, DistInfo())
    model, tok = load_checkpoint(args.checkpoint, device)  # checked to belong together
    model.eval()
    session = ChatSession(model, tok, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          max_new_tokens=args.max_new_tokens, system=args.system, seed=args.seed)
    if args.prompt is not None:
        try:
            session.reply(args.prompt)
        except KeyboardInterrupt:  # not cli.py's training hint: there is nothing to resume
            return 130
        return 0
    print(f"lmforge chat: {args.checkpoint} ({model.num_params() / 1e6:.1f}M parameters). {HELP}")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/help":
            print(HELP)
        elif line == "/reset":
            session.history.clear()
            print("(conversation cleared)")
        elif line.startswith("/system"):
            session.system = line[len("/system"):].strip()
            print(f"(system prompt {'set' if session.system else 'cleared'})")
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}")
        else:
            sys.stdout.write("model> ")
            try:
                session.reply(line)
            except KeyboardInterrupt:  # stops this reply only (the part shown is kept); Ctrl-C at the prompt quits
                print("(interrupted)")
            except LmforgeError as e:  # one bad turn does not end the conversation
                print(f"error: {e}")


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk to a checkpoint (interactive, or one-shot with -p)")
    p.add_argument("checkpoint", help="a model directory, e.g. runs/demo/sft/model")
    p.add_argument("-p", "--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
