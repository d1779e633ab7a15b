"""The pages (ARCHITECTURE 6b): the chat for signed-in users, the documents for users with the document permissions."""

from __future__ import annotations

from django.urls import path

from knowledge.web import chat, documents, originals

urlpatterns = [
    path("", chat.home, name="home"),
    path("chat/new/", chat.conversation_create, name="conversation-create"),
    path("chat/<int:conversation_id>/", chat.conversation_detail, name="conversation-detail"),
    path("chat/<int:conversation_id>/ask/", chat.message_create, name="message-create"),
    path("chat/<int:conversation_id>/delete/", chat.conversation_delete, name="conversation-delete"),
    path("messages/<int:message_id>/feedback/", chat.message_feedback, name="message-feedback"),
    path("documents/", documents.document_list, name="document-list"),
    path("documents/upload/", documents.document_upload, name="document-upload"),
    path("documents/<int:document_id>/", documents.document_detail, name="document-detail"),
    path("documents/<int:document_id>/reingest/", documents.document_reingest, name="document-reingest"),
    path("documents/<int:document_id>/delete/", documents.document_delete, name="document-delete"),
    path("documents/<int:document_id>/versions/", documents.document_version_create, name="document-version-create"),
    path(
        "documents/<int:document_id>/versions/<int:number>/restore/",
        documents.document_version_restore,
        name="document-version-restore",
    ),
    path("documents/<int:document_id>/view/", originals.document_original, name="document-original"),
    path(
        "documents/<int:document_id>/view/page/<int:page>.png",
        originals.document_original_page,
        name="document-original-page",
    ),
]
