"""LightningDataModules, one file per dataset, on one small base class."""

from data_modules.base import TokenDataModule
from data_modules.chat_messages import ChatMessages
from data_modules.context_chats import ContextChats
from data_modules.text_files import TextFiles
from data_modules.ultrachat import UltraChat200k
from data_modules.ultrafeedback import UltraFeedback
from data_modules.wikitext import WikiText103

__all__ = [
    "ChatMessages",
    "ContextChats",
    "TextFiles",
    "TokenDataModule",
    "UltraChat200k",
    "UltraFeedback",
    "WikiText103",
]
