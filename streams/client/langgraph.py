"""LangGraph adapter: a graph's thread is a Governor session; its steps go through the LangChain
callback handler (:mod:`streams.client.langchain`).

    threads = GovernorThreads(gov, provider="openai")
    config = {"configurable": {"thread_id": "conv-42"}}
    result = threads.invoke(graph, {"messages": [("user", question)]}, config)
    # or: with threads.run(config) as governed: graph.invoke(inputs, governed)

The session id is the thread id (``config["configurable"]["thread_id"]``, what a checkpointer
keys the conversation by). Each invocation is a turn of it: the first one emits SESSION_START,
the next ones continue the session (its ``seq`` goes on; the worker refuses events after a
SESSION_END, so a turn does not end it). The session ends with :meth:`GovernorThreads.end`
(``status``, ``error_type``) or :meth:`GovernorThreads.close`, at once when a KILL stops a turn
(KILLED), or, for a thread left alone, as TIMEOUT after the worker's idle timeout (it may
speak again after that). A turn that fails otherwise leaves the thread open: its failed step
is recorded as such. Inside, every
chat model and tool run of the graph is recorded and obeyed by a
:class:`~streams.client.langchain.GovernorCallbackHandler` added to the config's callbacks
(LangGraph passes them to every node): a KILL, a denied tool or a call over budget raises
:class:`SessionKilled` / :class:`StepBlocked` out of the graph before the model or tool runs.
Needs the ``fleet-governor[langgraph]`` extra (``langgraph``, ``langchain-core``).

Another process resuming the thread (a checkpointer's conversation picked up elsewhere) passes
``resume=True``, so the session's ``seq`` continues above what the first process used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, cast

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.runnables import RunnableConfig

from streams.client.governor import Governor, Session
from streams.client.langchain import GovernorCallbackHandler


class Invocable(Protocol):
    """A compiled LangGraph graph (anything with invoke/ainvoke taking a config)."""

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any: ...

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any: ...


class NoThreadId(ValueError):
    """The config names no thread: Governor cannot tell which session the run belongs to."""


def thread_id(config: Mapping[str, Any] | None) -> str:
    """``config["configurable"]["thread_id"]`` as a string; :class:`NoThreadId` otherwise."""
    configurable = (config or {}).get("configurable")
    value = configurable.get("thread_id") if isinstance(configurable, Mapping) else None
    if value is None or value == "":
        raise NoThreadId(
            'the LangGraph config has no configurable.thread_id: pass config={"configurable": '
            '{"thread_id": "<conversation id>"}} (the thread is the Governor session)'
        )
    return str(value)


def with_handler(config: Mapping[str, Any], handler: GovernorCallbackHandler) -> RunnableConfig:
    """A copy of ``config`` whose callbacks include ``handler`` (a list, a manager, or none)."""
    callbacks = config.get("callbacks")
    out: dict[str, Any] = dict(config)
    if callbacks is None:
        out["callbacks"] = [handler]
    elif isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(handler, inherit=True)
        out["callbacks"] = manager
    else:
        out["callbacks"] = [*callbacks, handler]
    return cast(RunnableConfig, out)


class GovernorThreads:
    """Governor sessions for the threads of LangGraph graphs (module doc)."""

    def __init__(
        self,
        gov: Governor,
        *,
        provider: str | None = None,
        category: str | None = None,
        prompt_version: str | None = None,
        model_version: str | None = None,
        tool_schema_version: str | None = None,
    ) -> None:
        self.gov = gov
        self.provider = provider
        self._fields = {
            "category": category,
            "prompt_version": prompt_version,
            "model_version": model_version,
            "tool_schema_version": tool_schema_version,
        }
        #: open sessions by thread id
        self._sessions: dict[str, Session] = {}
        #: each session's handler, whose ``problems`` count what it could not record
        self.handlers: dict[str, GovernorCallbackHandler] = {}

    def session(self, config: Mapping[str, Any], *, resume: bool = False) -> Session:
        """The session of the config's thread (the same object for every turn of it)."""
        tid = thread_id(config)
        session = self._sessions.get(tid)
        if session is None:
            session = self.gov.session(tid, resume=resume, **self._fields)
            self._sessions[tid] = session
            self.handlers[tid] = GovernorCallbackHandler(session, provider=self.provider)
        return session

    def end(
        self,
        config: Mapping[str, Any],
        *,
        status: str = "OK",
        error_type: str | None = None,
    ) -> None:
        """End the thread's session (SESSION_END; KILLED if a KILL stopped it): the
        conversation is over. A later turn of the thread would start a new session of the same
        id, which the worker refuses: give a finished conversation a new thread id."""
        self._end(thread_id(config), status, error_type)

    def close(self) -> None:
        """End every thread still open (at shutdown)."""
        for tid in list(self._sessions):
            self._end(tid, "OK", None)

    def _end(self, tid: str, status: str, error_type: str | None) -> None:
        session = self._sessions.pop(tid, None)
        self.handlers.pop(tid, None)
        if session is None:
            return
        if session.killed_by is not None:
            session.finish()
        else:
            session.finish(status=status, error_type=error_type)

    @contextmanager
    def run(self, config: Mapping[str, Any], *, resume: bool = False) -> Iterator[RunnableConfig]:
        """One turn of the thread: the config to invoke the graph with, governed."""
        tid = thread_id(config)
        started = tid in self._sessions
        session = self.session(config, resume=resume)
        if not started:
            try:
                session.start()
            except BaseException:
                self._sessions.pop(tid, None)  # refused (a concurrency cap): nothing is open
                self.handlers.pop(tid, None)
                raise
        try:
            yield with_handler(config, self.handlers[tid])
        finally:
            if session.killed_by is not None:  # even if the graph caught SessionKilled
                self._end(tid, "KILLED", None)

    @asynccontextmanager
    async def arun(
        self, config: Mapping[str, Any], *, resume: bool = False
    ) -> AsyncIterator[RunnableConfig]:
        """:meth:`run` for ``ainvoke`` / ``astream``."""
        with self.run(config, resume=resume) as governed:
            yield governed

    def invoke(self, graph: Invocable, input: Any, config: Mapping[str, Any], **kwargs: Any) -> Any:
        with self.run(config) as governed:
            return graph.invoke(input, governed, **kwargs)

    async def ainvoke(
        self, graph: Invocable, input: Any, config: Mapping[str, Any], **kwargs: Any
    ) -> Any:
        async with self.arun(config) as governed:
            return await graph.ainvoke(input, governed, **kwargs)
