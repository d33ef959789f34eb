"""Examples of using avatarplayer in your own app; each folder's ``run.py`` starts one."""
