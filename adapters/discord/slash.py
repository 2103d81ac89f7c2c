"""Slash commands: ``/chat`` and every command of :data:`bot.commands.COMMANDS`.

Each interaction is deferred first (Discord drops an interaction not acknowledged within
3 s) and finished by a follow-up. What a command does lives in :class:`bot.commands.Commands`,
with the admin check; this module only parses the interaction and presents the answer.
``/chat`` goes down the chat path and streams its reply into the follow-up. Its reply is
kept as owed like a message's (:mod:`adapters.discord.owed`); but an interaction's follow-ups
need its token, which is not kept and expires after 15 minutes, so a later process delivers
an owed ``/chat`` reply as a plain message in the interaction's channel, replying to nothing
(:mod:`adapters.discord.adopt`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any

import discord
from discord import app_commands

from adapters.discord import policy
from adapters.discord.chat import FAILED, MESSAGE_LIMIT, DiscordChat
from adapters.discord.owed import DiscordOwed
from adapters.discord.sinks import NO_PINGS, FollowupSink
from adapters.pump import ReplyGone
from adapters.text import split_message
from bot.commands import COMMANDS, Answer, Caller, Commands, CommandSpec
from bot.errors import ParleyError
from bot.wire import ChatRequest

log = logging.getLogger(__name__)

CHAT_DESCRIPTION = "Say something to the bot"
EMPTY_CHAT = "Say something after /chat, and I'll answer."


class SlashCommands:
    """Builds the command tree of a client and answers its interactions."""

    def __init__(self, chat: DiscordChat, commands: Commands) -> None:
        self.chat = chat
        self.commands = commands
        self.settings = chat.settings
        self.metrics = chat.metrics
        self.adapter_id = chat.adapter_id

    def tree(self, client: discord.Client) -> app_commands.CommandTree[discord.Client]:
        """A command tree for ``client`` holding ``/chat`` and every shared command."""
        tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
        tree.add_command(self._chat_command())
        for spec in COMMANDS:
            tree.add_command(self._command(spec))
        return tree

    async def sync(self, tree: app_commands.CommandTree[discord.Client]) -> None:
        """Register the commands with Discord: per listed guild (instant), else globally."""
        if not self.settings.guild_ids:
            await tree.sync()
            log.info("discord: slash commands synced globally (may take up to an hour)")
            return
        for guild_id in self.settings.guild_ids:
            guild = discord.Object(guild_id)
            tree.copy_global_to(guild=guild)
            await tree.sync(guild=guild)
        log.info("discord: slash commands synced to guild(s) %s", self.settings.guild_ids)

    # -- building ----------------------------------------------------------------------------

    def _chat_command(self) -> app_commands.Command[Any, ..., None]:
        async def chat(interaction: discord.Interaction, message: str) -> None:
            self.chat.spawn(self.run_chat(interaction, message), f"/chat {interaction.id}")

        app_commands.describe(message="What you want to say")(chat)
        return app_commands.Command(name="chat", description=CHAT_DESCRIPTION, callback=chat)

    def _command(self, spec: CommandSpec) -> app_commands.Command[Any, ..., None]:
        callback: Callable[..., Awaitable[None]]
        if spec.argument is None:

            async def plain(interaction: discord.Interaction) -> None:
                self.spawn(interaction, spec.name, "")

            callback = plain
        else:

            async def with_argument(interaction: discord.Interaction, value: str = "") -> None:
                self.spawn(interaction, spec.name, value)

            app_commands.rename(value=spec.argument)(with_argument)
            callback = with_argument
        return app_commands.Command(
            name=spec.name, description=spec.description[:100], callback=callback
        )

    # -- answering ---------------------------------------------------------------------------

    def spawn(self, interaction: discord.Interaction, name: str, argument: str) -> None:
        """Answer in a task the chat path tracks, so a stopping adapter finishes it."""
        work = self.run_command(interaction, name, argument)
        self.chat.spawn(work, f"/{name} {interaction.id}")

    async def run_chat(self, interaction: discord.Interaction, text: str) -> None:
        """``/chat``: the chat path, streamed into the follow-up."""
        request_id = policy.interaction_request_id(interaction.id)
        if not await self._claim(interaction, request_id):
            return
        await interaction.response.defer(thinking=True)
        self.metrics.messages.labels(self.adapter_id, "command").inc()
        sink = FollowupSink(
            interaction,
            ephemeral=False,
            metrics=self.metrics,
            adapter_id=self.adapter_id,
            claim=self.chat.claim(request_id),
        )
        try:
            if interaction.guild_id is None and not self.settings.allow_dms:
                await sink.send(policy.NO_DMS, first=True)
                return
            if not text.strip():
                await sink.send(EMPTY_CHAT, first=True)
                return
            refusal = await self.chat.refusal(interaction.user.id, text.strip())
            if refusal is not None:
                await sink.send(refusal or policy.slow_down(None), first=True)
                return
            request = self.chat.chat_request(
                request_id,
                text.strip(),
                channel_id=interaction.channel_id or interaction.user.id,
                user_id=interaction.user.id,
                chain_root=None,
            )
            await self.chat.stream(request, sink, typing=None, owed=_owed(interaction, request))
        except ParleyError as e:
            log.warning("discord /chat %s failed: %s", interaction.id, e)
            with suppress(ReplyGone):  # the reply's first post was out already
                await sink.send(FAILED, first=True)

    async def run_command(self, interaction: discord.Interaction, name: str, argument: str) -> None:
        """A shared command: defer (privately), run it in :class:`Commands`, follow up."""
        request_id = policy.interaction_request_id(interaction.id)
        if not await self._claim(interaction, request_id):
            return
        await interaction.response.defer(thinking=True, ephemeral=True)
        self.metrics.messages.labels(self.adapter_id, "command").inc()
        caller = self._caller(interaction, request_id)
        try:
            answer = await self.commands.answer(name, argument, caller)
        except ParleyError as e:  # Commands answers its own failures; this is Redis trouble
            log.warning("discord /%s %s failed: %s", name, interaction.id, e)
            answer = Answer(FAILED)
        sent: list[discord.Message] = []
        for part in split_message(policy.neutralise(answer.text), MESSAGE_LIMIT) or [FAILED]:
            sent.append(
                await interaction.followup.send(
                    part, wait=True, ephemeral=True, allowed_mentions=NO_PINGS
                )
            )
            self.metrics.sent.labels(self.adapter_id).inc()
        if answer.updates is not None:
            await self._follow(sent[0], answer.updates)

    async def _follow(self, message: discord.Message, updates: AsyncIterator[str]) -> None:
        """Show each progress update of a job (``/retrain``) in the command's follow-up."""
        async with aclosing(updates) as texts:  # type: ignore[type-var]
            async for text in texts:
                content = policy.neutralise(text)[:MESSAGE_LIMIT]
                try:
                    await message.edit(content=content, allowed_mentions=NO_PINGS)
                except discord.HTTPException as e:  # deleted, or the 15-minute token expired
                    log.info("discord: stopped showing job progress: %s", e)
                    return
                self.metrics.edits.labels(self.adapter_id).inc()

    def _caller(self, interaction: discord.Interaction, request_id: str) -> Caller:
        user = interaction.user
        roles = [role.id for role in getattr(user, "roles", [])]
        channel_id = interaction.channel_id or user.id
        return Caller(
            platform=policy.PLATFORM,
            user=str(user.id),
            conversation=policy.context_key(
                self.settings, channel_id=channel_id, user_id=user.id, chain_root=None
            ),
            request_id=request_id,
            reply_to=self.adapter_id,
            is_admin=policy.is_admin(self.settings, user.id, roles),
        )

    async def _claim(self, interaction: discord.Interaction, request_id: str) -> bool:
        """Claim the interaction's request id; false for a redelivery (already answered)."""
        try:
            claimed = await self.chat.state.claim(request_id)
        except ParleyError as e:  # Redis trouble: still answer, briefly
            log.warning("discord interaction %s: %s", request_id, e)
            self.metrics.errors.labels(self.adapter_id, "queue").inc()
            await interaction.response.defer(thinking=True, ephemeral=True)
            await interaction.followup.send(FAILED, ephemeral=True, allowed_mentions=NO_PINGS)
            return False
        if not claimed:
            log.info("discord interaction %s was delivered again; already answered", request_id)
        return claimed


def _owed(interaction: discord.Interaction, request: ChatRequest) -> DiscordOwed | None:
    """The record of a ``/chat`` reply: its channel, and no message to answer."""
    if interaction.channel_id is None:
        return None
    return DiscordOwed(
        request_id=request.id,
        reply_to=request.reply_to,
        conversation=request.conversation,
        user=request.user,
        created_ms=request.created_ms,
        channel_id=interaction.channel_id,
    )
