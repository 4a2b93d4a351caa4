-- wyseman for Python: bootstrap schema, part 5: English texts of the server's own
-- error codes. Clients translate an error code '!wm.lang:<code>' by fetching the lang
-- row of wm.lang (docs/protocol.md, 8 "Errors"); every code the gateway can send is
-- listed here. Our rows are refreshed on re-application only when their text differs,
-- so applying the file again writes nothing.

insert into wm.table_text as t (tt_sch, tt_tab, language, title, help)
values ('wm', 'lang', 'eng', 'Server Messages',
        'Messages of the wyseman gateway: errors it reports for requests it cannot run')
on conflict (tt_sch, tt_tab, language) do update
   set title = excluded.title, help = excluded.help
 where (t.title, t.help) is distinct from (excluded.title, excluded.help);

insert into wm.column_text as t (ct_sch, ct_tab, ct_col, language, title, help)
values ('wm', 'lang', 'always', 'eng', 'Always', 'A constant true value; the view only carries messages')
on conflict (ct_sch, ct_tab, ct_col, language) do update
   set title = excluded.title, help = excluded.help
 where (t.title, t.help) is distinct from (excluded.title, excluded.help);

insert into wm.message_text as t (mt_sch, mt_tab, code, language, title, help)
values
  ('wm', 'lang', 'badAction', 'eng', 'Unknown Action',
   'The server does not know the requested action, and no custom handler took it'),
  ('wm', 'lang', 'badMessage', 'eng', 'Malformed Request',
   'The request could not be read or turned into a query: a member is missing or of the wrong kind'),
  ('wm', 'lang', 'badTuples', 'eng', 'Wrong Row Count',
   'Exactly one record was expected, but the query found none or several'),
  ('wm', 'lang', 'badFieldName', 'eng', 'Missing Field Name',
   'A condition or sort entry does not name a column'),
  ('wm', 'lang', 'badLeft', 'eng', 'Missing Left Side',
   'A comparison has no column on its left side'),
  ('wm', 'lang', 'badRight', 'eng', 'Missing Right Side',
   'A comparison has no value to compare against'),
  ('wm', 'lang', 'badOperator', 'eng', 'Unknown Operator',
   'A comparison uses an operator the server does not accept'),
  ('wm', 'lang', 'badInsert', 'eng', 'Nothing to Insert',
   'An insert request gave no field values'),
  ('wm', 'lang', 'badUpdate', 'eng', 'Nothing to Update',
   'An update request gave no field values to change'),
  ('wm', 'lang', 'badWhere', 'eng', 'Unbounded Update',
   'An update needs conditions that select the records to change'),
  ('wm', 'lang', 'badDelete', 'eng', 'Unbounded Delete',
   'A delete needs conditions that select the records to remove'),
  ('wm', 'lang', 'badView', 'eng', 'View Not Allowed',
   'The view name is malformed or names a schema that clients may not use'),
  ('wm', 'lang', 'badLogic', 'eng', 'Malformed Conditions',
   'The structure of and/or groups in the conditions could not be understood'),
  ('wm', 'lang', 'noResult', 'eng', 'No Result',
   'The database returned neither rows nor an error'),
  ('wm', 'lang', 'noDatabase', 'eng', 'Database Unavailable',
   'The server could not reach the database; try again later'),
  ('wm', 'lang', 'busy', 'eng', 'Server Busy',
   'Too many requests are waiting for the database; try again shortly'),
  ('wm', 'lang', 'commitUnknown', 'eng', 'Outcome Unknown',
   'The connection to the database broke while the change was being committed: it may '
   'have been saved. Read it back before sending it again'),
  ('wm', 'lang', 'tooManyRows', 'eng', 'Too Many Rows',
   'The answer would have more rows than the server sends at once; ask for fewer with '
   'a limit and offset, or narrower conditions'),
  ('wm', 'lang', 'replyTooLarge', 'eng', 'Answer Too Large',
   'The answer would be larger than the server sends at once; ask for fewer rows or '
   'fields'),
  ('wm', 'lang', 'resourceTooLarge', 'eng', 'Report Too Large',
   'The report or export is larger than the server keeps for a download; ask for less'),
  ('wm', 'lang', 'resourcesFull', 'eng', 'Server Busy',
   'The server holds as many reports and exports as it may; try again in a few minutes'),
  ('wm', 'lang', 'undefined', 'eng', 'Database Error',
   'The database refused the request without naming a reason code'),
  ('wm', 'lang', 'internal', 'eng', 'Internal Error',
   'The server failed while handling the request; the problem has been logged'),
  ('wm', 'lang', '23505', 'eng', 'Duplicate Value',
   'The change would store a value that must be unique but already exists')
on conflict (mt_sch, mt_tab, code, language) do update
   set title = excluded.title, help = excluded.help
 where (t.title, t.help) is distinct from (excluded.title, excluded.help);
