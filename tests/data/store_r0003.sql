BEGIN TRANSACTION;
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO "alembic_version" VALUES('0003');
CREATE TABLE audit_events (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR(320) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	experiment VARCHAR(200) NOT NULL, 
	detail TEXT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "audit_events" VALUES(1,'2026-11-25 19:06:29.939167','ann','rated','small_mood','both_bad on outputs 10/12');
INSERT INTO "audit_events" VALUES(2,'2026-11-25 19:06:29.945713','ann','rated','small_mood','both_bad on outputs 3/1');
INSERT INTO "audit_events" VALUES(3,'2026-11-25 19:06:29.950887','ann','rated','small_mood','both_bad on outputs 5/6');
INSERT INTO "audit_events" VALUES(4,'2026-11-25 19:06:29.955742','ann','rated','small_mood','right on outputs 14/15');
INSERT INTO "audit_events" VALUES(5,'2026-11-25 19:06:29.960754','ann','rated','small_mood','both_bad on outputs 6/4');
INSERT INTO "audit_events" VALUES(6,'2026-11-25 19:06:29.965698','ann','rated','small_mood','left on outputs 2/3');
INSERT INTO "audit_events" VALUES(7,'2026-11-25 19:06:29.971365','bob','rated','small_mood','tie on outputs 2/1');
INSERT INTO "audit_events" VALUES(8,'2026-11-25 19:06:29.976429','bob','rated','small_mood','both_bad on outputs 18/16');
INSERT INTO "audit_events" VALUES(9,'2026-11-25 19:06:29.981279','bob','rated','small_mood','both_bad on outputs 11/12');
INSERT INTO "audit_events" VALUES(10,'2026-11-25 19:06:29.985922','bob','rated','small_mood','left on outputs 9/7');
INSERT INTO "audit_events" VALUES(11,'2026-11-25 19:06:29.990830','bob','rated','small_mood','both_bad on outputs 16/17');
INSERT INTO "audit_events" VALUES(12,'2026-11-25 19:06:29.995704','bob','rated','small_mood','both_bad on outputs 13/14');
CREATE TABLE experiments (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	description TEXT NOT NULL, 
	model_id VARCHAR(500) NOT NULL, 
	spec_json TEXT NOT NULL, 
	definition_hash VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	rater_token VARCHAR(64), 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
INSERT INTO "experiments" VALUES(1,'small_mood','A small store at schema revision 0003 for the upgrade test.','raincandy-u/TinyStories-656K','{"name": "small_mood", "description": "A small store at schema revision 0003 for the upgrade test.", "model": "raincandy-u/TinyStories-656K", "chat_template": "auto", "probe_prompt": "Once upon a time", "reveal_after_vote": false, "rating_question": "Which story is sadder?", "rating_overlap": 0.2, "neutral_prompts": ["Once upon a time"], "prompts": ["Once upon a time, there was a little bird who", "Tom went to the park with his dad. They", "Sara had a new doll. She"], "generation": {"max_new_tokens": 10, "do_sample": true, "temperature": 0.8, "top_k": 40, "top_p": 1.0, "seed": 7, "samples_per_prompt": 2}, "vectors": {"sad": {"method": "mean_diff", "read": "last", "pairs": [["Lily was very sad and she cried.", "Lily was very happy and she smiled."], ["Tom felt lonely and upset.", "Tom felt cheerful and glad."]]}}, "variants": [{"name": "baseline", "kind": "baseline"}, {"name": "sad_x2", "kind": "steering", "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 2.0, "scope": "all"}]}, {"name": "prompt_sad", "kind": "prompting", "prefix": "This is a sad story. "}], "scorers": [{"name": "sad_words", "kind": "words", "words": ["sad", "cry", "cried", "tears"]}, {"name": "happy_words", "kind": "words", "words": ["happy", "smile", "smiled"]}]}','977aae36ce260f94','2026-11-25 19:06:16.420187',NULL);
CREATE TABLE generation_metrics (
	id INTEGER NOT NULL, 
	generation_id INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	value FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (generation_id, name), 
	FOREIGN KEY(generation_id) REFERENCES generations (id) ON DELETE CASCADE
);
INSERT INTO "generation_metrics" VALUES(1,1,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(2,2,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(3,3,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(4,4,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(5,5,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(6,6,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(7,7,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(8,8,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(9,9,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(10,10,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(11,11,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(12,12,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(13,13,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(14,14,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(15,15,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(16,16,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(17,17,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(18,18,'sad_words',0.0);
INSERT INTO "generation_metrics" VALUES(19,1,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(20,2,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(21,3,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(22,4,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(23,5,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(24,6,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(25,7,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(26,8,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(27,9,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(28,10,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(29,11,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(30,12,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(31,13,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(32,14,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(33,15,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(34,16,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(35,17,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(36,18,'happy_words',0.0);
INSERT INTO "generation_metrics" VALUES(37,1,'fluency_ppl',5.76097249984741210937e+00);
INSERT INTO "generation_metrics" VALUES(38,2,'fluency_ppl',3.9715137481689453125e+00);
INSERT INTO "generation_metrics" VALUES(39,3,'fluency_ppl',5.76097249984741210937e+00);
INSERT INTO "generation_metrics" VALUES(40,4,'fluency_ppl',6.84307241439819335937e+00);
INSERT INTO "generation_metrics" VALUES(41,5,'fluency_ppl',1.26300144195556640625e+01);
INSERT INTO "generation_metrics" VALUES(42,6,'fluency_ppl',8.86097526550293);
INSERT INTO "generation_metrics" VALUES(43,7,'fluency_ppl',1.04547950744628906252e+02);
INSERT INTO "generation_metrics" VALUES(44,8,'fluency_ppl',9.08128204345703124965e+01);
INSERT INTO "generation_metrics" VALUES(45,9,'fluency_ppl',2.53991985321044921875e+01);
INSERT INTO "generation_metrics" VALUES(46,10,'fluency_ppl',1.24808464050292968752e+01);
INSERT INTO "generation_metrics" VALUES(47,11,'fluency_ppl',5.0438938140869140625e+01);
INSERT INTO "generation_metrics" VALUES(48,12,'fluency_ppl',8.39669113159179687517e+01);
INSERT INTO "generation_metrics" VALUES(49,13,'fluency_ppl',1.41538787841796874999e+02);
INSERT INTO "generation_metrics" VALUES(50,14,'fluency_ppl',2.37056365966796875007e+02);
INSERT INTO "generation_metrics" VALUES(51,15,'fluency_ppl',3.35165618896484375e+02);
INSERT INTO "generation_metrics" VALUES(52,16,'fluency_ppl',241.3798828125);
INSERT INTO "generation_metrics" VALUES(53,17,'fluency_ppl',2.07874404907226562489e+02);
INSERT INTO "generation_metrics" VALUES(54,18,'fluency_ppl',1.45839721679687500006e+02);
CREATE TABLE generations (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	run_id INTEGER, 
	variant_id INTEGER NOT NULL, 
	prompt_id INTEGER NOT NULL, 
	sample_index INTEGER NOT NULL, 
	text TEXT NOT NULL, 
	token_count INTEGER NOT NULL, 
	seconds FLOAT NOT NULL, 
	peak_memory_bytes INTEGER NOT NULL, 
	non_finite BOOLEAN DEFAULT 0 NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (variant_id, prompt_id, sample_index), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE, 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE SET NULL, 
	FOREIGN KEY(variant_id) REFERENCES variants (id) ON DELETE CASCADE, 
	FOREIGN KEY(prompt_id) REFERENCES prompts (id) ON DELETE CASCADE
);
INSERT INTO "generations" VALUES(1,1,1,1,1,0,'always wanted to do things. One day he remembered ',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482474');
INSERT INTO "generations" VALUES(2,1,1,2,1,0,'always wanted to fly high in the sky. The bird lived in a tree with ',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482477');
INSERT INTO "generations" VALUES(3,1,1,3,1,0,'always wanted to do things. One day he remembered ',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482478');
INSERT INTO "generations" VALUES(4,1,1,1,1,1,'always seen a loyal leopar',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482480');
INSERT INTO "generations" VALUES(5,1,1,2,1,1,'always wanted to fly. It flew up in the sky and it lo',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482480');
INSERT INTO "generations" VALUES(6,1,1,3,1,1,'always sell and listen to people. One day, the ',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482481');
INSERT INTO "generations" VALUES(7,1,1,1,2,0,'Tom, were two coats and a sais',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482482');
INSERT INTO "generations" VALUES(8,1,1,2,2,0,'am was very excited. He saw the park with Tom liked ',10,3.58456075014146335888e-03,453648384,0,'2026-11-25 19:06:16.482482');
INSERT INTO "generations" VALUES(9,1,1,3,2,0,'Tom, his dad were best friends. Tom liked his co',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512088');
INSERT INTO "generations" VALUES(10,1,1,1,2,1,'Tom and his dad were going to the park and they saw a ',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512090');
INSERT INTO "generations" VALUES(11,1,1,2,2,1,'lie lived in a ladder with many birds',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512091');
INSERT INTO "generations" VALUES(12,1,1,3,2,1,'am would make his dad laugh and have fun for ',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512091');
INSERT INTO "generations" VALUES(13,1,1,1,3,0,'ir mom was out in the kitchen. She wanted to have something special',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512092');
INSERT INTO "generations" VALUES(14,1,1,2,3,0,'el car loved to play with roll every day. It liked to th',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512093');
INSERT INTO "generations" VALUES(15,1,1,3,3,0,'ir family was out of what a live.
',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512093');
INSERT INTO "generations" VALUES(16,1,1,1,3,1,'ir daddy had a toy room and his mom called to ',10,3.25598812491989519912e-03,453820416,0,'2026-11-25 19:06:16.512094');
INSERT INTO "generations" VALUES(17,1,1,2,3,1,'ir Tom loved to play with blue blue car all day long. It was big and ',10,9.1095500001756590791e-03,453832704,0,'2026-11-25 19:06:16.532772');
INSERT INTO "generations" VALUES(18,1,1,3,3,1,'ir daughterorsile was always very ',10,9.1095500001756590791e-03,453832704,0,'2026-11-25 19:06:16.532774');
CREATE TABLE memberships (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	user VARCHAR(320) NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	added_by VARCHAR(320) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT one_role_per_user UNIQUE (experiment_id, user), 
	CONSTRAINT membership_role CHECK (role IN ('owner', 'analyst', 'rater')), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "memberships" VALUES(1,1,'owner@example.com','owner','setup','2026-11-25 19:06:29.997511');
INSERT INTO "memberships" VALUES(2,1,'rita@example.com','rater','owner@example.com','2026-11-25 19:06:29.997515');
CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO "meta" VALUES('schema_version','3');
CREATE TABLE prompts (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	text TEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, position), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "prompts" VALUES(1,1,0,'Once upon a time, there was a little bird who');
INSERT INTO "prompts" VALUES(2,1,1,'Tom went to the park with his dad. They');
INSERT INTO "prompts" VALUES(3,1,2,'Sara had a new doll. She');
CREATE TABLE ratings (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	rater VARCHAR(200) NOT NULL, 
	left_generation_id INTEGER NOT NULL, 
	right_generation_id INTEGER NOT NULL, 
	pair_low_id INTEGER NOT NULL, 
	pair_high_id INTEGER NOT NULL, 
	repeat INTEGER DEFAULT '0' NOT NULL, 
	choice VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT rating_choice CHECK (choice IN ('left', 'right', 'tie', 'both_bad')), 
	CONSTRAINT one_vote_per_rater_and_pair UNIQUE (experiment_id, rater, pair_low_id, pair_high_id, repeat), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE, 
	FOREIGN KEY(left_generation_id) REFERENCES generations (id) ON DELETE CASCADE, 
	FOREIGN KEY(right_generation_id) REFERENCES generations (id) ON DELETE CASCADE
);
INSERT INTO "ratings" VALUES(1,1,'ann',10,12,10,12,0,'both_bad','2026-11-25 19:06:29.937319');
INSERT INTO "ratings" VALUES(2,1,'ann',3,1,1,3,0,'both_bad','2026-11-25 19:06:29.944835');
INSERT INTO "ratings" VALUES(3,1,'ann',5,6,5,6,0,'both_bad','2026-11-25 19:06:29.949985');
INSERT INTO "ratings" VALUES(4,1,'ann',14,15,14,15,0,'right','2026-11-25 19:06:29.954883');
INSERT INTO "ratings" VALUES(5,1,'ann',6,4,4,6,0,'both_bad','2026-11-25 19:06:29.959948');
INSERT INTO "ratings" VALUES(6,1,'ann',2,3,2,3,0,'left','2026-11-25 19:06:29.964880');
INSERT INTO "ratings" VALUES(7,1,'bob',2,1,1,2,0,'tie','2026-11-25 19:06:29.970595');
INSERT INTO "ratings" VALUES(8,1,'bob',18,16,16,18,0,'both_bad','2026-11-25 19:06:29.975660');
INSERT INTO "ratings" VALUES(9,1,'bob',11,12,11,12,0,'both_bad','2026-11-25 19:06:29.980419');
INSERT INTO "ratings" VALUES(10,1,'bob',9,7,7,9,0,'left','2026-11-25 19:06:29.985131');
INSERT INTO "ratings" VALUES(11,1,'bob',16,17,16,17,0,'both_bad','2026-11-25 19:06:29.989930');
INSERT INTO "ratings" VALUES(12,1,'bob',13,14,13,14,0,'both_bad','2026-11-25 19:06:29.994943');
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	total_units INTEGER NOT NULL, 
	done_units INTEGER NOT NULL, 
	start_done INTEGER NOT NULL, 
	batch_size INTEGER NOT NULL, 
	device VARCHAR(32) NOT NULL, 
	dtype VARCHAR(32) NOT NULL, 
	cancel_requested BOOLEAN NOT NULL, 
	owner VARCHAR(200) NOT NULL, 
	phase VARCHAR(32) DEFAULT '' NOT NULL, 
	error TEXT NOT NULL, 
	started_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT run_status CHECK (status IN ('running', 'done', 'cancelled', 'failed', 'interrupted')), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "runs" VALUES(1,1,'done',18,18,0,8,'cpu','float32',0,'vm:8888:140192994397056','','','2026-11-25 19:06:16.433448','2026-11-25 19:06:16.588280','2026-11-25 19:06:16.588277');
CREATE TABLE variant_metrics (
	id INTEGER NOT NULL, 
	variant_id INTEGER NOT NULL, 
	run_id INTEGER, 
	name VARCHAR(100) NOT NULL, 
	value FLOAT NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (variant_id, name), 
	FOREIGN KEY(variant_id) REFERENCES variants (id) ON DELETE CASCADE, 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE SET NULL
);
INSERT INTO "variant_metrics" VALUES(1,1,1,'reversibility_max_abs_logit_diff',0.0,'2026-11-25 19:06:16.554550');
INSERT INTO "variant_metrics" VALUES(2,1,1,'probe_max_abs_logit_shift',0.0,'2026-11-25 19:06:16.554555');
INSERT INTO "variant_metrics" VALUES(3,1,1,'toggle_ms',1.34299989440478384494e-03,'2026-11-25 19:06:16.554556');
INSERT INTO "variant_metrics" VALUES(4,1,1,'steering_parameters',0.0,'2026-11-25 19:06:16.554556');
INSERT INTO "variant_metrics" VALUES(5,1,1,'layers_touched',0.0,'2026-11-25 19:06:16.554557');
INSERT INTO "variant_metrics" VALUES(6,1,1,'extraction_seconds',0.0,'2026-11-25 19:06:16.554557');
INSERT INTO "variant_metrics" VALUES(7,1,1,'prompt_tokens_mean',9.0,'2026-11-25 19:06:16.554558');
INSERT INTO "variant_metrics" VALUES(8,1,1,'side_effect_kl',0.0,'2026-11-25 19:06:16.554558');
INSERT INTO "variant_metrics" VALUES(9,2,1,'reversibility_max_abs_logit_diff',0.0,'2026-11-25 19:06:16.562902');
INSERT INTO "variant_metrics" VALUES(10,2,1,'probe_max_abs_logit_shift',7.44690465927124,'2026-11-25 19:06:16.562906');
INSERT INTO "variant_metrics" VALUES(11,2,1,'toggle_ms',5.86900023336056619882e-03,'2026-11-25 19:06:16.562907');
INSERT INTO "variant_metrics" VALUES(12,2,1,'steering_parameters',128.0,'2026-11-25 19:06:16.562908');
INSERT INTO "variant_metrics" VALUES(13,2,1,'layers_touched',1.0,'2026-11-25 19:06:16.562908');
INSERT INTO "variant_metrics" VALUES(14,2,1,'extraction_seconds',5.55899299979500938206e-03,'2026-11-25 19:06:16.562909');
INSERT INTO "variant_metrics" VALUES(15,2,1,'prompt_tokens_mean',9.0,'2026-11-25 19:06:16.562909');
INSERT INTO "variant_metrics" VALUES(16,2,1,'side_effect_kl',1.12213599681854248046e+00,'2026-11-25 19:06:16.562910');
INSERT INTO "variant_metrics" VALUES(17,3,1,'reversibility_max_abs_logit_diff',0.0,'2026-11-25 19:06:16.563761');
INSERT INTO "variant_metrics" VALUES(18,3,1,'probe_max_abs_logit_shift',0.0,'2026-11-25 19:06:16.563763');
INSERT INTO "variant_metrics" VALUES(19,3,1,'toggle_ms',1.19600008474662899971e-03,'2026-11-25 19:06:16.563764');
INSERT INTO "variant_metrics" VALUES(20,3,1,'steering_parameters',0.0,'2026-11-25 19:06:16.563764');
INSERT INTO "variant_metrics" VALUES(21,3,1,'layers_touched',0.0,'2026-11-25 19:06:16.563765');
INSERT INTO "variant_metrics" VALUES(22,3,1,'extraction_seconds',0.0,'2026-11-25 19:06:16.563765');
INSERT INTO "variant_metrics" VALUES(23,3,1,'prompt_tokens_mean',14.0,'2026-11-25 19:06:16.563766');
INSERT INTO "variant_metrics" VALUES(24,3,1,'side_effect_kl',6.00664950907230377197e-02,'2026-11-25 19:06:16.563766');
CREATE TABLE variants (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	kind VARCHAR(64) NOT NULL, 
	spec_json TEXT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, name), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "variants" VALUES(1,1,0,'baseline','baseline','{"name": "baseline", "kind": "baseline"}');
INSERT INTO "variants" VALUES(2,1,1,'sad_x2','steering','{"name": "sad_x2", "kind": "steering", "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 2.0, "scope": "all"}]}');
INSERT INTO "variants" VALUES(3,1,2,'prompt_sad','prompting','{"name": "prompt_sad", "kind": "prompting", "prefix": "This is a sad story. "}');
CREATE TABLE vectors (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	spec_json TEXT NOT NULL, 
	data BLOB, 
	model_id VARCHAR(500) NOT NULL, 
	hidden_size INTEGER, 
	method VARCHAR(64) NOT NULL, 
	pairs_hash VARCHAR(64) NOT NULL, 
	extraction_seconds FLOAT, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, name), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "vectors" VALUES(1,1,'sad','{"method": "mean_diff", "read": "last", "pairs": [["Lily was very sad and she cried.", "Lily was very happy and she smiled."], ["Tom felt lonely and upset.", "Tom felt cheerful and glad."]]}',X'40010000000000007B225F5F6D657461646174615F5F223A7B226D6574686F64223A226D65616E5F64696666222C2270616972735F68617368223A2263376536303639306462626133386233222C226C6179657273223A225B302C20315D222C22666F726D6174223A2273746565726C61622D766563746F722F31222C226D6F64656C5F6964223A227261696E63616E64792D752F54696E7953746F726965732D3635364B222C2272656164223A226C617374222C2265787472616374696F6E5F7365636F6E6473223A22302E303035353538393932393939373935303039222C2268696464656E5F73697A65223A22313238222C226E616D65223A22736164227D2C22646972656374696F6E73223A7B226474797065223A22463332222C227368617065223A5B322C3132385D2C22646174615F6F666673657473223A5B302C313032345D7D7D3C7D12BE1AD18140CEF92F40133006404A218C3FD2605F40F89D1E3F424740C09083EF3F9096F7BEA04FB63F9664A5BFA0B5BFBFB09A58BE5057A93F384EBBBFCA422A40783F544069CD88C052C040C06FBF94BFCC8A843FA0A85A3D848AB2BF7774D3C0908A023FBE791140101EB53E0DF3B5BF4CEA98BFF78DAE40FD576FC0C4F24E3F0069FFBC204A52403F64993F90E7033F4AC60140B5A555C06AE1C4BF48EE023F6799924080C00D3F022336BF7AE4874070E61940BA2642C0E81B903F1B8515C0C024993EA80318BF876B70C0883CCDC0CF9C0C40E0258BBE5858C3BFC44F734032C997C09A6111403490EDBF50E9AB40107F873F9E4EE4BFE7BB07C0EE8910BF646E8F3F97443240ABEE38C0B44335C0E0CF953F90A703408086153D8CA302C089660040A87EE73EB03609C0FCE388C02A3A42C0F686973FAA981140B84AA53F9033973F98174540274A4DC09A91ABC05D722BC044567ABFE47BA73FD07A1CC1356812C08081A5C010816ABF552BD5BF8C3C8CC0A0FC103F961382C0E02F19BEE4200D40C8F60D3F944649BF3081D7BF613156C0AA58EDBF80F5B2BF5DC09A3FB4AFDD3EF0C66BBFE0E84E3FC06A6ABE3E7656C08878413F247A24402E4386C03CB720401754D83F6DBCAE3F92B7A540DCDDC3BF88482640F8F364BF34FE8F3F56351F402243E03FC00DBEBF08828ABF3840C83E66DB92BFBEA6EBC0D0E5CBBFC816E44016B595BFC4461EC02E2C4BBFC2160B41A0C64D3F20E139C07F0CDC40F95B0741E076A23FAAD1924050C99940F8394ABF404A82BE503C023F1A7211411C6036403044BABF5C4B0DC011A60CC0F2ED2C40A8076CBE7AC200C0B94403C1CC9A664071A783C0A20FD0C0DF93DAC0F2F09BC088B4B73F3801A5C080C1763FAF4E9540C047CE3F5369B44074868CC0E099153E50767EC021885340BAA71A4170453D4068436540C8A85C4096702541EE44C24030ECC2BF84CD8A40B04BE6BE40E2F2C0DCA330BF781E8FC0C0F7633FAE5C9A40ECECEA409BD8BAC07C801940C02B2BC1C6904E40D84C6CC095BD4A417E18ED40EA81DCC006C79E40A5106940C034EF3F38AFA340052009C15C5A53C0AA50D34070AFC6BE48FFA740804172C076AC884190560B411D9795C0CE061AC1B0EF93BE6CF7F0C061732041E8DBE23E680010C0DA43EB40922E54C0F3D09CC0E0F1C2BFE078AABFF015683F18AA2AC1B30561C0A5D1ABC098A495BF667E28C0A04812C12835FD3F32C96EC0D0D51B40A23B66C0506E5E40544CC33F00FB323E2A88B8C00A2997C05E7C5DC0940F3E404C6EA8C0321BF0BFD46C61409105EDC0F9838540080E6840564BB4C000607BBF78C7373F952E2E402CA9284084A11441271C46C190D21AC0C0A3AC3F3C43343FC06F44BE90DFBE3F6099C9C0584E2B40D11A64C0144FA240C053FFC0','raincandy-u/TinyStories-656K',128,'mean_diff','c7e60690dbba38b3',5.55899299979500938206e-03,'2026-11-25 19:06:16.423057');
CREATE INDEX ix_audit_events_at ON audit_events (at);
CREATE INDEX ix_audit_events_experiment ON audit_events (experiment);
CREATE INDEX ix_prompts_experiment_id ON prompts (experiment_id);
CREATE INDEX ix_vectors_experiment_id ON vectors (experiment_id);
CREATE INDEX ix_variants_experiment_id ON variants (experiment_id);
CREATE INDEX ix_runs_experiment_id ON runs (experiment_id);
CREATE INDEX ix_memberships_experiment_id ON memberships (experiment_id);
CREATE INDEX ix_generations_variant_id ON generations (variant_id);
CREATE INDEX ix_generations_experiment_id ON generations (experiment_id);
CREATE INDEX ix_generations_prompt_id ON generations (prompt_id);
CREATE INDEX ix_variant_metrics_variant_id ON variant_metrics (variant_id);
CREATE INDEX ix_generation_metrics_generation_id ON generation_metrics (generation_id);
CREATE INDEX ix_ratings_experiment_id ON ratings (experiment_id);
COMMIT;
